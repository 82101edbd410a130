"""Keeping an outside service under its limits, as decisions over plain data.

A provider allows `requests_per_minute` and `max_concurrent` calls. Both are shared by every
processor instance through Firestore, spread over a few permit shards (`rate_shards` documents,
whatever the limits) so that none is a write hot spot and a permit costs the same reads whatever
the provider allows: each shard holds its share of the slots and of the per-minute budget, the
permits held in it (a call holds one for its duration) and the times of its recent calls, an
exact sliding window, so the sum never exceeds the limits in any 60-second window, not only in
aligned minutes. A 429 halves the usable share of both for every instance, pauses calls for its
Retry-After, and the share recovers linearly afterwards.

Interactive work (WhatsApp replies) may use every shard; bulk work leaves the last ones to it.
Between bulk tenants, the one with the largest backlog yields its turn once it holds its fair share
of the bulk slots while others have work waiting (see `yields_turn`).
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

WINDOW = timedelta(seconds=60)
MIN_FACTOR = 0.1


@dataclass(frozen=True)
class Backoff:
    """What the provider taught us: the usable share after its last 429, and when."""

    factor: float = 1.0
    since: datetime | None = None
    paused_until: datetime | None = None

    @classmethod
    def from_doc(cls, doc: dict[str, Any] | None) -> Backoff:
        doc = doc or {}
        return cls(float(doc.get("factor", 1.0)), doc.get("since"), doc.get("paused_until"))

    def to_doc(self) -> dict[str, Any]:
        return {"factor": self.factor, "since": self.since, "paused_until": self.paused_until}


def current_factor(backoff: Backoff, now: datetime, recovery: timedelta) -> float:
    """The usable share now: back to 1.0 linearly over `recovery` after the last 429."""
    if backoff.since is None or backoff.factor >= 1.0:
        return 1.0
    progress = (now - backoff.since) / recovery
    return min(1.0, backoff.factor + (1.0 - backoff.factor) * max(0.0, progress))


def after_rate_limited(
    backoff: Backoff, now: datetime, retry_after: float | None, recovery: timedelta
) -> Backoff:
    """A 429: halve what is usable now, and pause everyone for the provider's Retry-After."""
    factor = max(MIN_FACTOR, current_factor(backoff, now, recovery) / 2)
    pause = now + timedelta(seconds=min(retry_after if retry_after is not None else 1.0, 60.0))
    paused_until = max(pause, backoff.paused_until) if backoff.paused_until else pause
    return Backoff(factor, now, paused_until)


def usable_slots(max_concurrent: int, factor: float) -> int:
    return max(1, math.floor(max_concurrent * factor))


def shard_caps(requests_per_minute: int, shards: int, factor: float) -> list[int]:
    """Each shard's calls per sliding minute; together never more than the (learned) limit."""
    budget = max(1, math.floor(requests_per_minute * factor))
    base, extra = divmod(budget, shards)
    return [base + (1 if i < extra else 0) for i in range(shards)]


def reserve(usable: int) -> int:
    """How many of the usable slots or shards bulk work leaves to interactive work."""
    return 0 if usable <= 1 else max(1, usable // 5)


@dataclass(frozen=True)
class Hold:
    """A permit held in a shard: its token, whose share it counts against, and when it expires
    (a holder that crashed never releases it: it frees itself after the call's timeout)."""

    token: str
    tenant: str | None
    until: datetime

    def live(self, now: datetime) -> bool:
        return self.until > now


@dataclass(frozen=True)
class Shard:
    """One permit shard as read: its share of the slots and of the per-minute budget, the permits
    held in it and the calls it admitted lately."""

    index: int
    slots: int
    rate: int
    holds: tuple[Hold, ...] = ()
    # When its recent calls were admitted, in seconds since the epoch: plain numbers, because a
    # busy provider's window holds thousands and each permit reads and rewrites them.
    calls: tuple[float, ...] = ()

    def live(self, now: datetime) -> list[Hold]:
        return [h for h in self.holds if h.live(now)]


def shard_shares(
    max_concurrent: int, requests_per_minute: int, shards: int, factor: float
) -> list[tuple[int, int]]:
    """Each shard's (slots, calls per sliding minute) at the usable share `factor`: together
    never more than the (learned) limits. The slots and the budget go to the same shards, never
    more of them than there are usable slots, so no shard holds budget it cannot use."""
    usable = usable_slots(max_concurrent, factor)
    used = min(shards, usable)
    slots = shard_caps(usable, used, 1.0)
    rate = shard_caps(requests_per_minute, used, factor)
    return [(slots[i], rate[i]) if i < used else (0, 0) for i in range(shards)]


def usable_shards(shares: list[tuple[int, int]], interactive: bool) -> dict[int, int]:
    """The shards a call may take its permit in, each with the calls a minute it may fill:
    bulk work leaves the last shards to interactive work, or when there is only one, a part of
    its budget (see `reserve`)."""
    used = [i for i, (slots, _) in enumerate(shares) if slots > 0]
    allowed = candidate_shards([slots for slots, _ in shares], interactive)
    if interactive or len(allowed) < len(used):
        return {i: shares[i][1] for i in allowed}
    return {i: shares[i][1] - reserve(shares[i][1]) for i in allowed}


def fair_share(
    live: list[Hold], *, allowed: int, tenant: str, backlog: Mapping[str, int]
) -> tuple[int, int]:
    """(how many permits `tenant` holds, how many it may hold): an even split of the `allowed`
    bulk slots among the tenants holding permits or with work waiting (itself included)."""
    tenants = {h.tenant for h in live} | {t for t, n in backlog.items() if n > 0} | {tenant}
    held = sum(1 for h in live if h.tenant == tenant)
    return held, max(1, math.ceil(allowed / len(tenants)))


def yields_turn(live: list[Hold], *, allowed: int, tenant: str, backlog: Mapping[str, int]) -> bool:
    """Whether a bulk delivery steps aside at once (deferred to the back of the queue, the
    attempt not counted) so that other tenants' messages come up.

    Only the tenant with the largest backlog yields, and only once it holds its share: its
    messages fill the queue, so holding a push while waiting for a slot would keep the others'
    messages from ever being delivered. A smaller backlog never yields: it takes any free slot.
    """
    others = [n for t, n in backlog.items() if t != tenant and n > 0]
    if not others or backlog.get(tenant, 0) < max(others):
        return False
    held, share = fair_share(live, allowed=allowed, tenant=tenant, backlog=backlog)
    return held >= share


def live_holds(held: Mapping[str, datetime], now: datetime) -> dict[str, datetime]:
    """A capped holder's record of its permits (token -> until), without those that expired (a
    holder that crashed): what it holds now. Kept in one document per holder, written with
    every take, so that two instances racing for the holder's last place cannot both win,
    whichever shards they aim at."""
    return {token: until for token, until in held.items() if until > now}


@dataclass(frozen=True)
class Take:
    """Take a permit in `shard`: what its document holds once taken (the live permits with the
    new one, the calls of the window with the new call)."""

    shard: int
    holds: tuple[Hold, ...]
    calls: tuple[float, ...]


@dataclass(frozen=True)
class Wait:
    """No permit now: look again in `seconds`."""

    seconds: float


@dataclass(frozen=True)
class StepAside:
    """Bulk work of the largest backlog, holding its share: defer at once (see yields_turn)."""


def decide_permit(
    shards: list[Shard],
    *,
    now: datetime,
    token: str,
    until: datetime,
    tenant: str,
    interactive: bool,
    backlog: Mapping[str, int],
    per_tenant: int | None = None,
    holding: int | None = None,
    pick: Any = None,
) -> Take | Wait | StepAside:
    """Where a call may take its permit, from every shard as read. Bulk work uses the shards
    that leave the last ones' slots and budget to interactive work, and none while it must yield
    its turn to other tenants, nor while its tenant holds `per_tenant` permits (so that one
    tenant's slow or dead endpoint cannot hold every slot while another tenant's calls wait).
    `until`: when the new permit expires if never released. `holding`: how many the tenant
    holds, when known better than from the shards (see `live_holds`). `pick` chooses among the
    shards with room (random.choice)."""
    allowed = usable_shards([(s.slots, s.rate) for s in shards], interactive)
    live = [h for s in shards for h in s.live(now)]
    if not interactive and yields_turn(
        live, allowed=sum(shards[i].slots for i in allowed), tenant=tenant, backlog=backlog
    ):
        return StepAside()
    if holding is None:
        holding = sum(1 for h in live if h.tenant == tenant)
    if per_tenant is not None and holding >= per_tenant:
        return Wait(0.1)  # its own permits must end first: not a matter of free slots
    places: list[Take] = []
    soonest, slot_free = WINDOW.total_seconds(), False
    for index, rate in allowed.items():
        shard = shards[index]
        mine = shard.live(now)
        if len(mine) >= shard.slots:
            continue
        slot_free = True
        admitted, keep, wait = admit(shard.calls, now=now, cap=rate)
        if admitted:
            places.append(Take(index, (*mine, Hold(token, tenant, until)), tuple(keep)))
        soonest = min(soonest, wait)
    if places:
        return (pick or random.choice)(places)
    # A slot is free but the window is full: wait for a place; all taken: look again soon.
    return Wait(soonest) if slot_free else Wait(0.1)


def candidate_shards(caps: list[int], interactive: bool) -> list[int]:
    """Bulk work leaves the last shards' budget to interactive work."""
    usable = [i for i, cap in enumerate(caps) if cap > 0]
    keep = reserve(len(usable))
    return usable if interactive else usable[: len(usable) - keep]


def admit(calls: Sequence[float], *, now: datetime, cap: int) -> tuple[bool, list[float], float]:
    """One shard's sliding window: admit a call if fewer than `cap` fall in the last minute.
    `calls` in seconds since the epoch.

    Returns (admitted, the calls to store, seconds until a place frees if not admitted).
    """
    at, window = now.timestamp(), WINDOW.total_seconds()
    recent = sorted(t for t in calls if t > at - window)
    if len(recent) < cap:
        return True, [*recent, at], 0.0
    if cap <= 0:
        return False, recent, window
    return False, recent, max(0.0, recent[-cap] + window - at)
