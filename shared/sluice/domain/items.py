"""An item's life: queued -> running -> succeeded | failed, or cancelled; as plain decisions.

Each function here takes what is stored and the time, and says what to store next. The adapters
apply the decision inside one Firestore transaction together with the job's counter shards, so a
state and its count never disagree, and a second delivery of the same message finds the first
one's decision already there.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any


class ItemState(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def finished(self) -> bool:
        return self in FINISHED


FINISHED = frozenset({ItemState.SUCCEEDED, ItemState.FAILED, ItemState.CANCELLED})


@dataclass(frozen=True)
class ItemRecord:
    """The parts of a stored item that decide what a delivery may do with it."""

    state: ItemState
    attempts: int = 0
    lease_token: str | None = None
    lease_until: datetime | None = None
    # The dispatch of the item's latest message (see `superseded`); 0 for the intake's.
    dispatch: int = 0
    # The outputs of its kind's steps that have succeeded (sluice.domain.pipelines), when read.
    steps: dict[str, Any] | None = None

    @classmethod
    def from_doc(cls, doc: dict[str, Any]) -> ItemRecord:
        lease = doc.get("lease") or {}
        return cls(
            state=ItemState(doc["state"]),
            attempts=int(doc.get("attempts", 0)),
            lease_token=lease.get("token"),
            lease_until=lease.get("until"),
            dispatch=int(doc.get("dispatch") or 0),
            steps=(doc.get("progress") or {}).get("steps"),
        )


@dataclass(frozen=True)
class Transition:
    """What to write: the item's new fields and the state it moves from and to."""

    before: ItemState
    after: ItemState
    fields: dict[str, Any]


@dataclass(frozen=True)
class Claimed:
    transition: Transition
    token: str
    attempt: int


@dataclass(frozen=True)
class AlreadyFinished:
    state: ItemState


@dataclass(frozen=True)
class LeaseHeld:
    """Another worker holds a live lease: deliver again later, do not work twice."""

    until: datetime


Claim = Claimed | AlreadyFinished | LeaseHeld | Transition


def claim(
    item: ItemRecord, *, now: datetime, token: str, lease_seconds: int, max_attempts: int
) -> Claim:
    """Decide what a delivery of this item does.

    Returns `Claimed` (work on it), `AlreadyFinished` (acknowledge, nothing to do), `LeaseHeld`
    (someone else is working on it), or a bare `Transition` to `failed` when the item's lease
    expired on its last allowed attempt: a worker died holding it too many times.
    """
    if item.state.finished:
        return AlreadyFinished(item.state)
    if item.state is ItemState.RUNNING:
        if lease_live(item, now):
            assert item.lease_until is not None
            return LeaseHeld(item.lease_until)
        if item.attempts >= max_attempts:
            return fail(item, f"worker lost on all {item.attempts} attempts", now=now)
    attempt = item.attempts + 1
    fields = {
        "state": ItemState.RUNNING.value,
        "attempts": attempt,
        "lease": {"token": token, "until": now + timedelta(seconds=lease_seconds)},
        "updated_at": now,
    }
    return Claimed(Transition(item.state, ItemState.RUNNING, fields), token, attempt)


def holds_lease(item: ItemRecord, token: str) -> bool:
    """A result counts only from the worker that holds the item's current claim."""
    return item.state is ItemState.RUNNING and item.lease_token == token


def save_progress(
    item: ItemRecord, saved: dict[str, Any], *, token: str, fields: dict[str, Any], now: datetime
) -> Transition | None:
    """The worker holding the claim records how far its work got (`saved`: what is recorded
    already), so that a takeover resumes there instead of repeating an effect. None when the
    claim is not this worker's any more."""
    if not holds_lease(item, token):
        return None
    progress = {**saved, **fields}
    return Transition(item.state, item.state, {"progress": progress, "updated_at": now})


def _finish(item: ItemRecord, state: ItemState, *, now: datetime, **fields: Any) -> Transition:
    """Every finished state clears the lease and stamps `finished_at`, which exports key on."""
    base = {"state": state.value, "lease": None, "finished_at": now, "updated_at": now}
    return Transition(item.state, state, {**base, **fields})


def succeed(item: ItemRecord, *, result: dict[str, Any], now: datetime) -> Transition:
    return _finish(item, ItemState.SUCCEEDED, now=now, result=result, error=None)


def fail(item: ItemRecord, reason: str, *, now: datetime, step: str | None = None) -> Transition:
    """`step`: the step of its kind the item failed at, when it is known."""
    return _finish(item, ItemState.FAILED, now=now, error=reason, failed_step=step)


def release_for_retry(item: ItemRecord, reason: str, *, now: datetime) -> Transition:
    """A transient failure with attempts left: back to the queue, keeping the last error."""
    fields = {"state": ItemState.QUEUED.value, "error": reason, "lease": None, "updated_at": now}
    return Transition(item.state, ItemState.QUEUED, fields)


def requeue_uncounted(item: ItemRecord, *, reason: str, now: datetime) -> Transition:
    """The provider was out of capacity (429): back to the queue, and the attempt is given back,
    since waiting for capacity is not a failure of the item."""
    change = release_for_retry(item, reason, now=now)
    fields = {**change.fields, "attempts": max(0, item.attempts - 1)}
    return Transition(change.before, change.after, fields)


def after_error(
    item: ItemRecord, *, reason: str, permanent: bool, max_attempts: int, now: datetime,
    step: str | None = None,
) -> Transition:  # fmt: skip
    """A provider error (at `step` of its kind, if known): fail now if it cannot get better or
    attempts are spent, else requeue."""
    if permanent:
        return fail(item, reason, now=now, step=step)
    if item.attempts >= max_attempts:
        return fail(item, f"{reason} (after {item.attempts} attempts)", now=now, step=step)
    return release_for_retry(item, reason, now=now)


def retry(item: ItemRecord, *, now: datetime) -> Transition | None:
    """retry-failed: a failed item goes back to the queue with its attempts renewed, for a
    message sent with `dispatch_at(now)`; any other item is left alone (so the call can be
    repeated safely)."""
    if item.state is not ItemState.FAILED:
        return None
    # Asked for on purpose: what earlier attempts saved (a reply whose sending was left in
    # doubt) is forgotten, so the work is done again; but the steps that succeeded are kept,
    # so a pipeline resumes at its failed step and pays for no step twice.
    progress = {"steps": item.steps} if item.steps else None
    fields = {"state": ItemState.QUEUED.value, "attempts": 0, "lease": None, "progress": progress,
              "finished_at": None, "failed_step": None, "updated_at": now,
              "dispatch": dispatch_at(now)}  # fmt: skip
    return Transition(item.state, ItemState.QUEUED, fields)


def cancel(item: ItemRecord, *, now: datetime) -> Transition | None:
    """cancel: a queued item will not run; a running one finishes, a finished one stays."""
    if item.state is not ItemState.QUEUED:
        return None
    return _finish(item, ItemState.CANCELLED, now=now, error="cancelled")


def lease_live(item: ItemRecord, now: datetime) -> bool:
    return (
        item.state is ItemState.RUNNING and item.lease_until is not None and item.lease_until > now
    )


def dead_lettered(item: ItemRecord, *, reason: str, now: datetime) -> Transition | None:
    """Pub/Sub gave up on a message: its item fails with the reason. A finished item stays as it
    is, and so does one a worker holds a live lease on (another message got through: that
    worker's outcome counts)."""
    if item.state.finished or lease_live(item, now):
        return None
    return fail(item, reason, now=now)


def dispatch_at(now: datetime) -> int:
    """The dispatch number of messages sent for an item at `now`: later sends, larger numbers."""
    return int(now.timestamp() * 1000)


def superseded(item: ItemRecord, dispatch: int) -> bool:
    """Whether a message of dispatch `dispatch` was overtaken by a newer one for its item.

    A message waiting for capacity is acknowledged and published again, so it stays alive for as
    long as an outage lasts; the sweeper, which cannot tell it from a lost one, sends the item a
    new message, stamped with a later dispatch that it records on the item. A delivery of an
    older message then ends there: acknowledged, not published again, not recorded as a failure.
    So an item has at most two live messages (the newest, and an older one until its next
    delivery), however many sweeps an outage outlasts.
    """
    return dispatch < item.dispatch


def stalled(last_progress: datetime, *, now: datetime, stall: timedelta) -> bool:
    """A batch none of whose items changed state for `stall`: its queued items may have lost their
    messages (a publish that failed after they were requeued), so the sweeper sends new ones."""
    return now - last_progress >= stall
