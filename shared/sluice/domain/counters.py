"""A job's counts, spread over a few shard documents.

Every item state change adds -1 to the old state and +1 to the new one in a shard picked at random,
in the same transaction as the item. Status sums the shards: a constant number of reads whatever
the batch size, and no single document takes every write of a busy batch.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sluice.domain.items import FINISHED, ItemState

STATES = tuple(ItemState)


def delta(before: ItemState, after: ItemState) -> dict[str, int]:
    if before is after:
        return {}
    return {before.value: -1, after.value: +1}


def pick_shard(shards: int, rng: random.Random | None = None) -> int:
    return (rng or random).randrange(shards)


def initial_shards(total: int, shards: int) -> list[dict[str, int]]:
    """All items start queued; the first shard holds that, the rest start at zero."""
    docs = [dict.fromkeys((s.value for s in STATES), 0) for _ in range(shards)]
    docs[0][ItemState.QUEUED.value] = total
    return docs


@dataclass(frozen=True)
class Counts:
    total: int
    by_state: dict[str, int]

    @property
    def finished(self) -> int:
        return sum(self.by_state[s.value] for s in FINISHED)

    @property
    def complete(self) -> bool:
        return self.finished >= self.total

    @property
    def progress(self) -> float:
        return 1.0 if self.total == 0 else round(self.finished / self.total, 4)


# Items added after a job was created (a day's WhatsApp messages) count here, per shard.
ADDED = "added"


def added() -> dict[str, int]:
    return {ItemState.QUEUED.value: +1, ADDED: +1}


def sum_shards(total: int, shards: Iterable[Mapping[str, Any] | None]) -> Counts:
    """`total` is the job's size at creation; items added since are counted in the shards."""
    by_state = dict.fromkeys((s.value for s in STATES), 0)
    for shard in shards:
        total += int((shard or {}).get(ADDED, 0))
        for state in by_state:
            by_state[state] += int((shard or {}).get(state, 0))
    return Counts(total, by_state)


def estimate_completion(
    counts: Counts, *, started_at: datetime, now: datetime, requests_per_minute: int
) -> datetime | None:
    """When the open items should be done: the observed pace, never faster than the provider's
    rate limit allows. None until something has finished (there is no pace yet)."""
    remaining = counts.total - counts.finished
    elapsed = (now - started_at).total_seconds()
    if remaining <= 0 or counts.finished == 0 or elapsed <= 0:
        return None
    per_second = min(counts.finished / elapsed, requests_per_minute / 60)
    return now + timedelta(seconds=remaining / per_second)
