"""A job's counts, spread over a few shard documents.

Every item state change adds -1 to the old state and +1 to the new one in its item's shard (its
index modulo the shards: consecutive items spread evenly), in the same commit as the item. Status
sums the shards: a constant number of reads whatever the batch size, and no single document takes
every write of a busy batch.

A pipeline's items are counted per step too (`steps.<step>.<state>`), from the same commits:
each item is, for each step of its kind, running it, succeeded at it (its output recorded),
failed at it (the item failed there), skipped (the item finished without it: cancelled, or failed
at another step), or else queued for it. A commit moves the step counts its change of the item
moved, computed from the item as read and as written, so they never drift either. A kind of one
step needs none: its step's counts are the item counts.

Each shard also counts its items not finished yet (`open`). The commit that finishes an item
learns its shard's new count from the increment itself (a transform's result), so only a commit
that leaves its shard with no open item need read every shard to see whether the job is done:
the last item to finish always does.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sluice.domain.items import FINISHED, ItemState

STATES = tuple(ItemState)


# A shard's items that have not finished: 0 once every item counted in it has.
OPEN = "open"


STEP_STATES = ("running", "succeeded", "failed", "skipped")


def step_state(item: Mapping[str, Any], step: str) -> str | None:
    """Where an item stands at one step of its kind (see the module's docstring); None: queued."""
    progress = item.get("progress") or {}
    if step in (progress.get("steps") or {}):
        return "succeeded"
    state = item.get("state")
    if state == ItemState.FAILED.value and item.get("failed_step") == step:
        return "failed"
    if state in {s.value for s in FINISHED}:
        return "skipped"
    # Its call under way (a remote job: from its start to its end, while the item waits).
    run = (progress.get("runs") or {}).get(step) or {}
    if run.get("started_at") and not run.get("finished_at"):
        return "running"
    return None


def step_moves(
    steps: Iterable[str], before: Mapping[str, Any], after: Mapping[str, Any]
) -> dict[str, int]:
    """The step counts a change of an item from `before` to `after` moves."""
    moves: dict[str, int] = {}
    for step in steps:
        was, now = step_state(before, step), step_state(after, step)
        if was != now:
            if was is not None:
                moves[f"steps.{step}.{was}"] = -1
            if now is not None:
                moves[f"steps.{step}.{now}"] = +1
    return moves


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
    # A pipeline's counts per step and state (STEP_STATES), as the shards hold them.
    steps: dict[str, dict[str, int]] = field(default_factory=dict)

    def of_steps(self, names: Sequence[str]) -> dict[str, dict[str, int]]:
        """Each step's items queued, running, succeeded, failed and skipped; a kind of one step
        has the item counts (its cancelled items skipped it)."""
        if len(names) == 1:
            by = self.by_state
            return {names[0]: {"queued": by["queued"], "running": by["running"],
                               "succeeded": by["succeeded"], "failed": by["failed"],
                               "skipped": by["cancelled"]}}  # fmt: skip
        out = {}
        for name in names:
            counted = {s: int(self.steps.get(name, {}).get(s, 0)) for s in STEP_STATES}
            out[name] = {"queued": self.total - sum(counted.values()), **counted}
        return out

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
    (its increments' new values, in the order of their field paths); None if it moved none."""
    if OPEN not in moves:
        return None
    order = sorted(moves, key=lambda path: tuple(path.split(".")))
    return int(transform_results[order.index(OPEN)].integer_value)


def sum_shards(total: int, shards: Iterable[Mapping[str, Any] | None]) -> Counts:
    """`total` is the job's size at creation; items added since are counted in the shards."""
    by_state = dict.fromkeys((s.value for s in STATES), 0)
    steps: dict[str, dict[str, int]] = {}
    for shard in shards:
        total += int((shard or {}).get(ADDED, 0))
        for state in by_state:
            by_state[state] += int((shard or {}).get(state, 0))
        for step, counted in ((shard or {}).get("steps") or {}).items():
            mine = steps.setdefault(step, dict.fromkeys(STEP_STATES, 0))
            for state in STEP_STATES:
                mine[state] += int(counted.get(state, 0))
    return Counts(total, by_state, steps)


def estimate_completion(
    counts: Counts, *, started_at: datetime, now: datetime,
    calls: Mapping[str, int], requests_per_minute: Mapping[str, int],
) -> datetime | None:  # fmt: skip
    """When the open items should be done: at the observed pace, but never sooner than the
    bottleneck provider allows, the one whose calls still to make (`calls`, by provider) take
    longest at its declared rate. None when nothing is left, or nothing has finished and no
    call is left to bound it."""
    remaining = counts.total - counts.finished
    elapsed = (now - started_at).total_seconds()
    if remaining <= 0:
        return None
    bound = max((n * 60 / requests_per_minute[p] for p, n in calls.items() if n > 0),
                default=0.0)  # fmt: skip
    pace = remaining * elapsed / counts.finished if counts.finished and elapsed > 0 else 0.0
    if not pace and not bound:
        return None
    return now + timedelta(seconds=max(pace, bound))


def calls_left(
    steps: Mapping[str, Mapping[str, int]], providers: Mapping[str, str]
) -> dict[str, int]:
    """The calls each provider still owes a batch: for each step, its items neither succeeded,
    failed nor skipped at it (`steps`: Counts.of_steps), on its provider (`providers`)."""
    left: dict[str, int] = {}
    for step, counted in steps.items():
        owed = counted["queued"] + counted["running"]
        left[providers[step]] = left.get(providers[step], 0) + owed
    return left
