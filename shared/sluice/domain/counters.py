"""A job's counts, spread over a few shard documents.

Every item state change adds -1 to the old state and +1 to the new one in its item's shard (its
index modulo the shards: consecutive items spread evenly), in the same commit as the item. Status
sums the shards: a constant number of reads whatever the batch size, and no single document takes
every write of a busy batch.

Each shard also counts its items not finished yet (`open`). The commit that finishes an item
learns its shard's new count from the increment itself (a transform's result), so only a commit
that leaves its shard with no open item need read every shard to see whether the job is done:
the last item to finish always does.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sluice.domain.items import FINISHED, ItemState

STATES = tuple(ItemState)


# A shard's items that have not finished: 0 once every item counted in it has.
OPEN = "open"


def delta(before: ItemState, after: ItemState) -> dict[str, int]:
    if before is after:
        return {}
    moves = {before.value: -1, after.value: +1}
    if before.finished != after.finished:
        moves[OPEN] = -1 if after.finished else +1
    return moves


def shard_of(index: int, shards: int) -> int:
    """The shard an item is counted in, by its index in its batch, for good."""
    return index % shards


def initial_shards(total: int, shards: int) -> list[dict[str, int]]:
    """All items start queued and open, each counted in its own shard (see `shard_of`)."""
    docs = []
    for shard in range(shards):
        items = total // shards + (1 if shard < total % shards else 0)
        doc = dict.fromkeys((s.value for s in STATES), 0)
        doc[ItemState.QUEUED.value] = doc[OPEN] = items
        docs.append(doc)
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
    return {ItemState.QUEUED.value: +1, ADDED: +1, OPEN: +1}


def open_after(moves: dict[str, int], transform_results: list[Any]) -> int | None:
    """A shard's open items after a commit that moved `moves` in it, from the commit's result
    (its increments' new values, in the order of their field names); None if it moved none."""
    if OPEN not in moves:
        return None
    return int(transform_results[sorted(moves).index(OPEN)].integer_value)


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
