"""A provider's limits, shared by every instance through Firestore (see sluice.domain.limits).

`limits/{provider}` holds what the provider taught us (its 429s); `shards/{i}` are the permit
shards, each with its share of the slots and of the rate window. A permit is one read of every
shard (a constant few, whatever the provider allows) and one conditional write to the shard it
takes, so instances rarely contend and never both win; its release is one write.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import random
import sys
import threading
import time
import uuid
from array import array
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from functools import partial
from types import TracebackType
from typing import Any, Generic, TypeVar

from google.api_core.exceptions import Aborted, AlreadyExists, FailedPrecondition, NotFound
from google.cloud import firestore
from google.cloud.firestore_v1.field_path import FieldPath

from sluice import clock
from sluice.adapters.outside import ProviderError
from sluice.domain import limits
from sluice.outcomes import Defer
from sluice.topology import Provider

T = TypeVar("T")

log = logging.getLogger(__name__)

# How long the learned backoff is trusted before it is read again.
BACKOFF_CACHE_SECONDS = 0.5
# A crashed holder's slot frees itself after its call's timeout plus this.
SLOT_GRACE_SECONDS = 15.0
# How long a waiting permit trusts the shards it is not looking at before it reads them all again.
FULL_READ_SECONDS = 1.0
# How long the tenants' backlogs are trusted before they are read again.
BACKLOG_CACHE_SECONDS = 2.0


class Cached(Generic[T]):
    """A value read again at most every `seconds`, by one thread: the others go on with what it
    was meanwhile (every thread of a busy instance read it at once, each time it aged)."""

    def __init__(self, read: Callable[[], T], seconds: float) -> None:
        self._read, self._seconds = read, seconds
        self._value: tuple[float, T] | None = None
        self._lock = threading.Lock()

    def get(self) -> T:
        cached = self._value
        if cached is not None and time.monotonic() - cached[0] <= self._seconds:
            return cached[1]
        # The first read waits for whoever is reading; later ones do not.
        if not self._lock.acquire(blocking=cached is None):
            assert cached is not None
            return cached[1]
        try:
            cached = self._value
            if cached is None or time.monotonic() - cached[0] > self._seconds:
                cached = (time.monotonic(), self._read())
                self._value = cached
            return cached[1]
        finally:
            self._lock.release()

    def set(self, value: T) -> T:
        self._value = (time.monotonic(), value)
        return value


@dataclass(frozen=True)
class Permit:
    shard: int
    token: str
    holder: firestore.DocumentReference | None = None  # a capped holder's record of its permits


class Limiter:
    def __init__(
        self, db: firestore.Client, name: str, provider: Provider, *, shards: int,
        recovery_seconds: float, backlog: Callable[[], dict[str, int]] = dict,
    ) -> None:  # fmt: skip
        """`backlog` gives each tenant's queued bulk items: the largest backlog yields its turn
        once it holds its share of the slots while others wait (see limits.yields_turn)."""
        self.name = name
        self._backlogs = Cached(backlog, BACKLOG_CACHE_SECONDS)
        self._db = db
        self._provider = provider
        self._recovery = timedelta(seconds=recovery_seconds)
        self._root = db.collection("limits").document(name)
        self._shards = [self._root.collection("shards").document(str(i)) for i in range(shards)]
        self._backoff = Cached(
            lambda: limits.Backoff.from_doc(self._root.get().to_dict()), BACKOFF_CACHE_SECONDS
        )

    # -- what the provider taught us --------------------------------------------------------------

    def backoff(self) -> limits.Backoff:
        return self._backoff.get()

    def factor(self) -> float:
        return limits.current_factor(self.backoff(), clock.now(), self._recovery)

    def rate_limited(self, retry_after: float | None) -> None:
        """The provider answered 429: slow every instance down, not only this call."""

        @firestore.transactional
        def run(tx: firestore.Transaction) -> limits.Backoff:
            current = limits.Backoff.from_doc(self._root.get(transaction=tx).to_dict())
            learned = limits.after_rate_limited(current, clock.now(), retry_after, self._recovery)
            tx.set(self._root, learned.to_doc())
            return learned

        learned = self._backoff.set(run(self._db.transaction(max_attempts=10)))
        log.warning("%s answered 429: usable share now %.2f, paused until %s", self.name,
                    learned.factor, learned.paused_until)  # fmt: skip

    def backlog(self) -> dict[str, int]:
        return self._backlogs.get()

    # -- permits ----------------------------------------------------------------------------------

    def acquire(
        self, *, tenant: str, interactive: bool, wait: float, cap: int | None = None,
        hold_seconds: float | None = None,
    ) -> Permit | None:  # fmt: skip
        """A permit (a concurrency slot and a place in the rate window), waiting up to `wait`
        seconds. `tenant` holds at most `cap` permits at once (default: the provider's tenant
        cap). The slot frees itself `hold_seconds` after it was taken if never released
        (default: the call's timeout and a grace: its holder died); a remote job's is held from
        its start to its final status, released by whichever delivery sees that.

        None when there was no capacity in that time: the caller defers its work, which is not a
        failure and costs the item no attempt.

        The first try reads every permit shard, a later one only the shard it lost a race for
        or, while it waits, one shard at a time (every shard again after FULL_READ_SECONDS).
        Each try is one commit that takes a place in a shard, conditional on the document being
        as read (its update time), so two instances can never take the same place: a shard
        read earlier than the others only ever costs a lost race, never a limit. Optimistic
        writes rather than transactions: a transaction costs three round trips per document and
        holds locks, and this runs before every provider call (profiled in `make bench`).
        """
        deadline = time.monotonic() + wait
        token = uuid.uuid4().hex
        cap = cap if cap is not None else self._provider.tenant_max_concurrent
        holder = None if cap is None else self._holder_ref(tenant)
        provider = self._provider
        snaps: dict[str, Any] = {}  # every shard (and the holder's record) as last read
        read_all_at = 0.0
        look_at: int | None = None  # the one shard to read again, after a lost race or a wait
        while True:
            now = clock.now()
            backoff = self.backoff()
            pause = random.uniform(0.02, 0.1)
            if backoff.paused_until is not None and backoff.paused_until > now:
                pause = max(pause, (backoff.paused_until - now).total_seconds())
            else:
                shares = limits.shard_shares(provider.max_concurrent,
                                             provider.requests_per_minute, len(self._shards),
                                             self.factor())  # fmt: skip
                if look_at is None or time.monotonic() - read_all_at > FULL_READ_SECONDS:
                    look_at, read_all_at = None, time.monotonic()
                    refs = [*self._shards, *([holder] if holder else [])]
                else:
                    refs = [self._shards[look_at], *([holder] if holder else [])]
                snaps.update({s.reference.path: s for s in self._db.get_all(refs)})
                holds = (
                    None
                    if holder is None
                    else limits.live_holds(
                        (snaps[holder.path].to_dict() or {}).get("held", {}), now
                    )
                )
                shards = [
                    _shard(i, share, snaps[ref.path].to_dict())
                    for i, (ref, share) in enumerate(zip(self._shards, shares, strict=True))
                ]
                hold = hold_seconds or provider.timeout_seconds + SLOT_GRACE_SECONDS
                until = now + timedelta(seconds=hold)
                decision = limits.decide_permit(
                    shards, now=now, token=token, until=until, tenant=tenant,
                    interactive=interactive, backlog={} if interactive else self.backlog(),
                    per_tenant=cap, holding=None if holds is None else len(holds),
                    pick=partial(_fresh_first, look_at),
                )  # fmt: skip
                if isinstance(decision, limits.StepAside):
                    return None
                if isinstance(decision, limits.Take):
                    held = None if holds is None or holder is None else (holder, holds)
                    if self._take(snaps, decision, token, until, held):
                        return Permit(decision.shard, token, holder)
                    # Lost a race for that shard: read it again at once, and only it.
                    look_at, pause = decision.shard, random.uniform(0, 0.02)
                else:
                    pause = max(pause, decision.seconds + random.uniform(0, 0.05))
                    # While waiting, one shard at a time shows what frees up.
                    look_at = random.choice(list(limits.usable_shards(shares, interactive)))
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            time.sleep(min(max(pause, 0.02), remaining))

    def _holder_ref(self, holder: str) -> firestore.DocumentReference:
        # Hashed: a holder's name (a tenant, a phone number id) need not be a valid document id.
        key = hashlib.sha256(holder.encode()).hexdigest()[:32]
        return self._root.collection("holders").document(key)

    def _take(
        self, snaps: dict[str, Any], take: limits.Take, token: str, until: datetime,
        held: tuple[firestore.DocumentReference, dict[str, datetime]] | None = None,
    ) -> bool:  # fmt: skip
        """Write the shard as `take` leaves it (and the capped holder's record, `held`) in one
        commit, if none of them changed since it was read. False if another instance got there
        first."""
        batch = self._db.batch()
        shard = {
            "holds": {h.token: {"tenant": h.tenant, "until": h.until} for h in take.holds},
            "calls": pack_calls(take.calls),
        }
        writes: list[tuple[firestore.DocumentReference, dict[str, Any]]] = [
            (self._shards[take.shard], shard)
        ]
        if held is not None:
            writes.append((held[0], {"held": {**held[1], token: until}}))
        for ref, fields in writes:
            read = snaps[ref.path]
            if read.exists:
                when = self._db.write_option(last_update_time=read.update_time)
                batch.update(ref, fields, option=when)
            else:
                batch.create(ref, fields)
        try:
            batch.commit()
        except (FailedPrecondition, AlreadyExists, Aborted):
            return False
        return True

    def permit(
        self, *, tenant: str, interactive: bool, wait: float, cap: int | None = None
    ) -> Held:
        """A permit for the calls made inside the `with` block, released when it ends, whatever
        happens. A 429 raised inside slows every instance down, and comes out marked as told.
        Entering raises Defer if no permit came free within `wait`: nothing was called."""
        return Held(self, tenant=tenant, interactive=interactive, wait=wait, cap=cap)

    def learn(self, error: ProviderError) -> ProviderError:
        """A 429 the provider answered slows every instance down, once: the error comes back
        marked as told, so no other limiter is told of it again."""
        if not error.rate_limited or error.limiter_informed:
            return error
        self.rate_limited(error.retry_after)
        return replace(error, limiter_informed=True)

    def call(self, call: Callable[[], T], *, tenant: str, interactive: bool, wait: float) -> T:
        """One call under a permit (see `permit`)."""
        with self.permit(tenant=tenant, interactive=interactive, wait=wait):
            return call()

    def release(self, permit: Permit) -> None:
        """Free the permit: its own entry only, unconditionally. One that expired meanwhile was
        dropped by the next taker of its shard, and deleting it again changes nothing."""
        entry = FieldPath("holds", permit.token).to_api_repr()
        with contextlib.suppress(NotFound):
            self._shards[permit.shard].update({entry: firestore.DELETE_FIELD})
        if permit.holder is not None:
            # Its own entry only; one left behind by a crash expires with its `until`.
            with contextlib.suppress(NotFound):
                entry = FieldPath("held", permit.token).to_api_repr()
                permit.holder.update({entry: firestore.DELETE_FIELD})


class Held:
    """`with limiter.permit(...)`: a class rather than a generator, because ProviderError is a
    frozen dataclass and contextlib's generator wrapper assigns to a re-raised error."""

    def __init__(
        self, limiter: Limiter, *, tenant: str, interactive: bool, wait: float, cap: int | None
    ) -> None:
        self._limiter, self._tenant, self._interactive = limiter, tenant, interactive
        self._wait, self._cap = wait, cap
        self._permit: Permit | None = None

    def __enter__(self) -> Permit:
        limiter = self._limiter
        permit = limiter.acquire(
            tenant=self._tenant, interactive=self._interactive, wait=self._wait, cap=self._cap
        )
        if permit is None:
            raise Defer(f"no {limiter.name} capacity came free within {self._wait:g}s")
        self._permit = permit
        return permit

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:  # fmt: skip
        assert self._permit is not None
        self._limiter.release(self._permit)
        if isinstance(error, ProviderError):
            told = self._limiter.learn(error)
            if told is not error:
                raise told from None


def _fresh_first(fresh: int | None, places: list[limits.Take]) -> limits.Take:
    """The shard read alone just now (`fresh`), if it has room: the others were read earlier,
    and a place that looked free there may be gone, a lost race."""
    return random.choice([p for p in places if p.shard == fresh] or places)


def _shard(index: int, share: tuple[int, int], doc: dict[str, Any] | None) -> limits.Shard:
    doc = doc or {}
    holds = tuple(
        limits.Hold(token, hold.get("tenant"), hold["until"])
        for token, hold in (doc.get("holds") or {}).items()
    )
    return limits.Shard(index, share[0], share[1], holds, unpack_calls(doc.get("calls")))


def pack_calls(calls: Sequence[float]) -> bytes:
    """A window's call times as one bytes field, 8 bytes a call: decoded and encoded in C, where
    an array of timestamps cost each permit 10 µs a call through the client's wrappers
    (profiled: 9 to 21 ms of CPU a permit as an instant provider's window filled), and 8 bytes
    a call keeps a shard far below Firestore's 1 MiB document limit at high declared rates."""
    times = array("d", calls)
    if sys.byteorder == "big":  # stored little-endian, whichever machine wrote them
        times.byteswap()
    return times.tobytes()


def unpack_calls(stored: Any) -> tuple[float, ...]:
    if isinstance(stored, bytes):
        times = array("d")
        times.frombytes(stored)
        if sys.byteorder == "big":
            times.byteswap()
        return tuple(times)
    # Written before the window was packed: a list of timestamps.
    return tuple(t.timestamp() for t in stored or ())
