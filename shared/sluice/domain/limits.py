"""Keeping an outside service under its limits, as decisions over plain data.

A provider allows `requests_per_minute` and `max_concurrent` calls. Both are shared by every
processor instance through Firestore, spread over several documents so none is a write hot spot:

- concurrency: `max_concurrent` slot documents; a call holds one for its duration;
- rate: `rate_shards` documents, each allowed its share of the per-minute budget, each keeping the
  times of its recent calls: an exact sliding window, so the sum never exceeds the limit in any
  60-second window, not only in aligned minutes;
- learning: a 429 halves the usable share of both for every instance, pauses calls for its
  Retry-After, and the share recovers linearly afterwards.

Interactive work (WhatsApp replies) may use every slot and shard; bulk work leaves a reserve to it.
Between bulk tenants, the one with the largest backlog yields its turn once it holds its fair share
of the bulk slots while others have work waiting (see `yields_turn`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
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
class Slot:
    index: int
    holder: str | None = None
    tenant: str | None = None
    until: datetime | None = None

    def free(self, now: datetime) -> bool:
        return self.holder is None or self.until is None or self.until <= now


def _live(slots: list[Slot], now: datetime, usable: int) -> list[Slot]:
    return [s for s in slots[:usable] if not s.free(now)]


def fair_share(
    slots: list[Slot], *, now: datetime, usable: int, tenant: str, backlog: Mapping[str, int]
) -> tuple[int, int]:
    """(how many bulk slots `tenant` holds, how many it may hold): an even split of the bulk slots
    among the tenants holding slots or with work waiting (itself included)."""
    allowed = usable - reserve(usable)
    live = _live(slots, now, usable)
    tenants = {s.tenant for s in live} | {t for t, n in backlog.items() if n > 0} | {tenant}
    held = sum(1 for s in live if s.tenant == tenant)
    return held, max(1, math.ceil(allowed / len(tenants)))


def yields_turn(
    slots: list[Slot], *, now: datetime, usable: int, tenant: str, backlog: Mapping[str, int]
) -> bool:
    """Whether a bulk delivery steps aside at once (deferred to the back of the queue, the
    attempt not counted) so that other tenants' messages come up.

    Only the tenant with the largest backlog yields, and only once it holds its share: its
    messages fill the queue, so holding a push while waiting for a slot would keep the others'
    messages from ever being delivered. A smaller backlog never yields: it takes any free slot.
    """
    others = [n for t, n in backlog.items() if t != tenant and n > 0]
    if not others or backlog.get(tenant, 0) < max(others):
        return False
    held, share = fair_share(slots, now=now, usable=usable, tenant=tenant, backlog=backlog)
    return held >= share


def candidate_slots(
    slots: list[Slot],
    *,
    now: datetime,
    usable: int,
    tenant: str,
    interactive: bool,
    backlog: Mapping[str, int] | None = None,
    per_tenant: int | None = None,
    holding: int | None = None,
) -> list[int]:
    """The free slots this caller may take, in the order to try them: bulk work uses the first
    `usable - reserve` slots, and none while it must yield its turn to other tenants, nor while
    its tenant holds `per_tenant` slots (so that one tenant's slow or dead endpoint cannot hold
    every slot while another tenant's calls wait). `holding`: how many it holds, when known
    better than from the slots (see `live_holds`)."""
    allowed = usable if interactive else usable - reserve(usable)
    if not interactive and yields_turn(
        slots, now=now, usable=usable, tenant=tenant, backlog=backlog or {}
    ):
        return []
    if holding is None:
        holding = held_by(slots, now=now, tenant=tenant)
    if per_tenant is not None and holding >= per_tenant:
        return []
    return [s.index for s in slots[:allowed] if s.free(now)]


def live_holds(held: Mapping[str, datetime], now: datetime) -> dict[str, datetime]:
    """A capped holder's record of its permits (token -> until), without those that expired (a
    holder that crashed): what it holds now. Kept in one document per holder, written with
    every take, so that two instances racing for the holder's last place cannot both win,
    whichever slots they aim at."""
    return {token: until for token, until in held.items() if until > now}


def held_by(slots: list[Slot], *, now: datetime, tenant: str) -> int:
    """How many live slots `tenant` holds (of all slots: a share learned from a 429 may have
    shrunk the usable ones below what is held)."""
    return sum(1 for s in slots if not s.free(now) and s.tenant == tenant)


def candidate_shards(caps: list[int], interactive: bool) -> list[int]:
    """Bulk work leaves the last shards' budget to interactive work."""
    usable = [i for i, cap in enumerate(caps) if cap > 0]
    keep = reserve(len(usable))
    return usable if interactive else usable[: len(usable) - keep]


def admit(calls: list[datetime], *, now: datetime, cap: int) -> tuple[bool, list[datetime], float]:
    """One shard's sliding window: admit a call if fewer than `cap` fall in the last minute.

    Returns (admitted, the calls to store, seconds until a place frees if not admitted).
    """
    recent = sorted(t for t in calls if t > now - WINDOW)
    if len(recent) < cap:
        return True, [*recent, now], 0.0
    if cap <= 0:
        return False, recent, WINDOW.total_seconds()
    return False, recent, max(0.0, (recent[-cap] + WINDOW - now).total_seconds())
