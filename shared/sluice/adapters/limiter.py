"""A provider's limits, shared by every instance through Firestore (see sluice.domain.limits).

`limits/{provider}` holds what the provider taught us (its 429s); `slots/{i}` are the concurrency
slots and `rate/{i}` the sliding-window shards. Every decision is a small transaction on one
document, picked at random among those allowed, so instances rarely contend.
"""

from __future__ import annotations

import logging
import random
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import TypeVar

from google.cloud import firestore

from sluice.adapters.outside import ProviderError
from sluice.domain import limits
from sluice.topology import Provider

T = TypeVar("T")

log = logging.getLogger(__name__)

# How long the learned backoff is trusted before it is read again.
BACKOFF_CACHE_SECONDS = 0.5
# A crashed holder's slot frees itself after its call's timeout plus this.
SLOT_GRACE_SECONDS = 15.0
# How long the tenants' backlogs are trusted before they are read again.
BACKLOG_CACHE_SECONDS = 2.0


def utcnow() -> datetime:
    return datetime.now(UTC)


class NoCapacity(Exception):
    """No permit came free within the wait: the caller defers its work, which is not a failure."""


@dataclass(frozen=True)
class Permit:
    slot: int
    token: str


class Limiter:
    def __init__(
        self, db: firestore.Client, name: str, provider: Provider, *, shards: int,
        recovery_seconds: float, backlog: Callable[[], dict[str, int]] = dict,
    ) -> None:  # fmt: skip
        """`backlog` gives each tenant's queued bulk items: the largest backlog yields its turn
        once it holds its share of the slots while others wait (see limits.yields_turn)."""
        self.name = name
        self._backlog = backlog
        self._backlog_cache: tuple[float, dict[str, int]] | None = None
        self._db = db
        self._provider = provider
        self._shards = shards
        self._recovery = timedelta(seconds=recovery_seconds)
        self._root = db.collection("limits").document(name)
        self._slots = [
            self._root.collection("slots").document(str(i)) for i in range(provider.max_concurrent)
        ]
        self._rate = [self._root.collection("rate").document(str(i)) for i in range(shards)]
        self._backoff = limits.Backoff()
        self._backoff_read = 0.0

    # -- what the provider taught us --------------------------------------------------------------

    def backoff(self) -> limits.Backoff:
        if time.monotonic() - self._backoff_read > BACKOFF_CACHE_SECONDS:
            self._backoff = limits.Backoff.from_doc(self._root.get().to_dict())
            self._backoff_read = time.monotonic()
        return self._backoff

    def factor(self) -> float:
        return limits.current_factor(self.backoff(), utcnow(), self._recovery)

    def rate_limited(self, retry_after: float | None) -> None:
        """The provider answered 429: slow every instance down, not only this call."""

        @firestore.transactional
        def run(tx: firestore.Transaction) -> limits.Backoff:
            current = limits.Backoff.from_doc(self._root.get(transaction=tx).to_dict())
            learned = limits.after_rate_limited(current, utcnow(), retry_after, self._recovery)
            tx.set(self._root, learned.to_doc())
            return learned

        self._backoff = run(self._db.transaction(max_attempts=10))
        self._backoff_read = time.monotonic()
        log.warning("%s answered 429: usable share now %.2f, paused until %s", self.name,
                    self._backoff.factor, self._backoff.paused_until)  # fmt: skip

    def backlog(self) -> dict[str, int]:
        cached = self._backlog_cache
        if cached is None or time.monotonic() - cached[0] > BACKLOG_CACHE_SECONDS:
            cached = (time.monotonic(), self._backlog())
            self._backlog_cache = cached
        return cached[1]

    # -- permits ----------------------------------------------------------------------------------

    def acquire(self, *, tenant: str, interactive: bool, wait: float) -> Permit | None:
        """A concurrency slot and a place in the rate window, waiting up to `wait` seconds.

        None when there was no capacity in that time: the caller defers its work, which is not a
        failure and costs the item no attempt.
        """
        deadline = time.monotonic() + wait
        token = uuid.uuid4().hex
        slot = self._take_slot(token, tenant, interactive, deadline)
        if slot is None:
            return None
        if self._take_rate(interactive, deadline):
            return Permit(slot, token)
        self.release(Permit(slot, token))
        return None

    def call(self, call: Callable[[], T], *, tenant: str, interactive: bool, wait: float) -> T:
        """One call to the provider under a permit, released whatever happens. A 429 it answers
        slows every instance down, and its error comes back marked as told; NoCapacity if no
        permit came free within `wait`."""
        permit = self.acquire(tenant=tenant, interactive=interactive, wait=wait)
        if permit is None:
            raise NoCapacity(f"no {self.name} capacity came free within {wait:g}s")
        try:
            return call()
        except ProviderError as error:
            if not error.rate_limited or error.limiter_informed:
                raise
            self.rate_limited(error.retry_after)
            raise replace(error, limiter_informed=True) from None
        finally:
            self.release(permit)

    def release(self, permit: Permit) -> None:
        ref = self._slots[permit.slot]

        @firestore.transactional
        def run(tx: firestore.Transaction) -> None:
            if (ref.get(transaction=tx).to_dict() or {}).get("holder") == permit.token:
                tx.set(ref, {"holder": None, "tenant": None, "until": None})

        run(self._db.transaction(max_attempts=10))

    def _pause(self, deadline: float) -> bool:
        """Sleep a little (or through a 429's pause); False once the deadline has passed."""
        backoff = self.backoff()
        pause = random.uniform(0.02, 0.1)
        if backoff.paused_until is not None:
            pause = max(pause, (backoff.paused_until - utcnow()).total_seconds())
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        time.sleep(min(pause, remaining))
        return True

    def _take_slot(self, token: str, tenant: str, interactive: bool, deadline: float) -> int | None:
        while True:
            now = utcnow()
            backoff = self.backoff()
            if backoff.paused_until is None or backoff.paused_until <= now:
                usable = limits.usable_slots(self._provider.max_concurrent, self.factor())
                snapshot = sorted(
                    (_slot(int(snap.id), snap.to_dict()) for snap in self._db.get_all(self._slots)),
                    key=lambda s: s.index,
                )
                backlog = {} if interactive else self.backlog()
                if not interactive and limits.yields_turn(
                    snapshot, now=now, usable=usable, tenant=tenant, backlog=backlog
                ):
                    return None
                # Not yielding (decided just above): any free slot it is allowed will do.
                free = limits.candidate_slots(
                    snapshot, now=now, usable=usable, tenant=tenant, interactive=interactive
                )
                random.shuffle(free)
                for index in free[:3]:
                    if self._claim_slot(index, token, tenant, now):
                        return index
            if not self._pause(deadline):
                return None

    def _claim_slot(self, index: int, token: str, tenant: str, now: datetime) -> bool:
        ref = self._slots[index]
        until = now + timedelta(seconds=self._provider.timeout_seconds + SLOT_GRACE_SECONDS)

        @firestore.transactional
        def run(tx: firestore.Transaction) -> bool:
            if not _slot(index, ref.get(transaction=tx).to_dict()).free(utcnow()):
                return False
            tx.set(ref, {"holder": token, "tenant": tenant, "until": until})
            return True

        try:
            return bool(run(self._db.transaction(max_attempts=2)))
        except ValueError:  # lost the race for this slot to another instance
            return False

    def _take_rate(self, interactive: bool, deadline: float) -> bool:
        while True:
            caps = limits.shard_caps(self._provider.requests_per_minute, self._shards,
                                     self.factor())  # fmt: skip
            shards = limits.candidate_shards(caps, interactive)
            random.shuffle(shards)
            soonest = limits.WINDOW.total_seconds()
            for index in shards:
                admitted, wait = self._admit(index, caps[index])
                if admitted:
                    return True
                soonest = min(soonest, wait)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            time.sleep(min(remaining, max(0.02, soonest) + random.uniform(0, 0.05)))

    def _admit(self, index: int, cap: int) -> tuple[bool, float]:
        ref = self._rate[index]

        @firestore.transactional
        def run(tx: firestore.Transaction) -> tuple[bool, float]:
            calls = (ref.get(transaction=tx).to_dict() or {}).get("calls", [])
            admitted, keep, wait = limits.admit(calls, now=utcnow(), cap=cap)
            if admitted:
                tx.set(ref, {"calls": keep})
            return admitted, wait

        try:
            result: tuple[bool, float] = run(self._db.transaction(max_attempts=3))
            return result
        except ValueError:  # contended: try another shard
            return False, 0.0


def _slot(index: int, doc: dict | None) -> limits.Slot:
    doc = doc or {}
    return limits.Slot(index, doc.get("holder"), doc.get("tenant"), doc.get("until"))
