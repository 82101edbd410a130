"""Processing one item: claim it, do its work, record the outcome, close the job.

The work differs (an AI call for a CRM item, an AI reply sent over WhatsApp for a message); the
life around it is the same, and is here. What happens next is said by how this returns: returning
acknowledges the message; raising has Pub/Sub deliver it again after the subscription's backoff.
A repeated delivery of a finished item is acknowledged and does nothing; one of an item another
worker is on is delivered again later.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

from sluice.adapters.jobs_store import JobStore, SeenItem, now
from sluice.adapters.limiter import Limiter
from sluice.adapters.outside import ProviderError
from sluice.domain.items import (
    AlreadyFinished,
    Claimed,
    ItemRecord,
    ItemState,
    LeaseHeld,
    Transition,
    after_error,
    requeue_uncounted,
    succeed,
    superseded,
)

log = logging.getLogger(__name__)


class Progress:
    """How far earlier claims of an item got (`saved`), and `save` to record more under this
    claim: work with an effect that must not be repeated (sending a message) records it before
    and after, and a takeover after a crash resumes from the record instead of repeating it."""

    def __init__(self, saved: dict[str, Any], save: Callable[[dict[str, Any]], bool]) -> None:
        self.saved = dict(saved)
        self._save = save

    def save(self, **fields: Any) -> None:
        """Raises LeaseLost when the claim is not this worker's any more: stop, do nothing else."""
        if not self._save(fields):
            raise LeaseLost("another delivery took the item over")
        self.saved.update(fields)


class LeaseLost(Exception):
    """The claim passed to another delivery (this one was presumed dead): its outcome counts."""


# The work of one item: its input, its job's params and its progress in, its result out;
# ProviderError if not.
Work = Callable[[Any, dict[str, Any], Progress], dict[str, Any]]


def without_progress(call: Callable[[Any, dict[str, Any]], dict[str, Any]]) -> Work:
    """Work that can be repeated as it is (a model call): it needs no record of its progress."""
    return lambda item_input, params, _progress: call(item_input, params)


class RedeliverLater(Exception):
    """Raised to have Pub/Sub deliver the message again: the item is not finished yet."""


@dataclass(frozen=True)
class Outcome:
    item: str
    state: str
    detail: str = ""
    # Set when this outcome completed its job: the completion's number.
    completed: int | None = None
    job: str = ""


@dataclass(frozen=True)
class Capacity:
    """The limits a piece of work runs under, and how long it may wait for them."""

    limiter: Limiter
    interactive: bool
    wait_seconds: float
    # Whose share of the slots the work counts against (default: its job's tenant), and the
    # most that holder may have at once (default: the provider's tenant cap).
    holder: str = ""
    holder_cap: int | None = None


class Deferred(Exception):
    """No capacity came free in time: the item was not touched and lost no attempt. The caller
    has the message delivered again without it counting as a failure."""


def process_item(
    store: JobStore,
    work: Work,
    job_id: str,
    item_id: str,
    *,
    lease_seconds: int,
    max_attempts: int,
    capacity: Capacity | None = None,
    dispatch: int | None = None,
) -> Outcome:
    """`dispatch`: which send of the item the message being handled is, for messages the
    sweeper sends again (see sluice.domain.items.superseded); None for those it never does."""
    # A finished item needs no capacity: answer a repeated delivery before waiting for any.
    # The claim below is conditional on the item staying as read here.
    seen = store.read_item(job_id, item_id)
    if seen is not None and ItemState(seen.doc["state"]).finished:
        return Outcome(item_id, seen.doc["state"], "duplicate delivery")
    if (
        dispatch is not None
        and seen is not None
        and superseded(ItemRecord.from_doc(seen.doc), dispatch)
    ):
        return Outcome(item_id, "superseded", "a newer message carries the item")
    job = store.job_meta(job_id)
    permit = None
    if capacity is not None:
        permit = capacity.limiter.acquire(
            tenant=capacity.holder or str(job.get("tenant")),
            interactive=capacity.interactive,
            wait=capacity.wait_seconds,
            cap=capacity.holder_cap,
        )
        if permit is None:
            raise Deferred(f"no {capacity.limiter.name} capacity for item {item_id}")
    released = False

    def release() -> None:
        # Once the provider call is over: the slot is not held while the outcome is recorded.
        nonlocal released
        if permit is not None and capacity is not None and not released:
            released = True
            capacity.limiter.release(permit)

    try:
        return _claim_and_work(
            store, work, job_id, item_id, job["params"], capacity, seen, release,
            lease_seconds=lease_seconds, max_attempts=max_attempts,
        )  # fmt: skip
    finally:
        release()


def _claim_and_work(
    store: JobStore,
    work: Work,
    job_id: str,
    item_id: str,
    params: dict[str, Any],
    capacity: Capacity | None,
    seen: SeenItem | None,
    done_calling: Callable[[], None],
    *,
    lease_seconds: int,
    max_attempts: int,
) -> Outcome:
    token = uuid.uuid4().hex
    claimed = store.claim_item(
        job_id, item_id, token=token, lease_seconds=lease_seconds, max_attempts=max_attempts,
        seen=seen,
    )  # fmt: skip
    if claimed is None:
        # Nothing to do, ever: a message for an item that does not exist is acknowledged.
        log.error("work item %s/%s does not exist", job_id, item_id)
        return Outcome(item_id, "missing")
    decision = claimed.decision
    if isinstance(decision, AlreadyFinished):
        return Outcome(item_id, decision.state.value, "duplicate delivery")
    if isinstance(decision, LeaseHeld):
        raise RedeliverLater(f"item {item_id} is leased until {decision.until}")
    if isinstance(decision, Transition):
        completed = store.complete_if_done(job_id)
        return Outcome(item_id, decision.after.value, "lease expired too often", completed)
    assert isinstance(decision, Claimed)

    latest = claimed.after

    def save(fields: dict[str, Any]) -> bool:
        nonlocal latest
        saved, latest = store.save_progress(
            job_id, item_id, token=token, fields=fields, seen=latest
        )
        return saved

    decide: Callable[[ItemRecord], Transition]
    rate_limited = False
    try:
        result = work(claimed.input, params, Progress(claimed.progress, save))
        decide = partial(succeed, result=result, now=now())
    except LeaseLost:
        return Outcome(item_id, "superseded", "another delivery took the item over")
    except ProviderError as error:
        rate_limited = error.rate_limited
        if rate_limited:
            if capacity is not None and not error.limiter_informed:
                capacity.limiter.rate_limited(error.retry_after)
            decide = partial(requeue_uncounted, reason=str(error), now=now())
        else:
            decide = partial(
                after_error,
                reason=str(error),
                permanent=error.permanent,
                max_attempts=max_attempts,
                now=now(),
            )
    finally:
        done_calling()

    change = store.finish_item(job_id, item_id, token=token, decide=decide, seen=latest)
    if change is None:
        return Outcome(item_id, "superseded", "another delivery took the item over")
    if change.after is ItemState.QUEUED:
        reason = f"item {item_id}: {change.fields['error']}"
        raise Deferred(reason) if rate_limited else RedeliverLater(reason)
    return Outcome(item_id, change.after.value, completed=store.complete_if_done(job_id))
