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

from sluice.adapters.jobs_store import JobStore, now
from sluice.adapters.outside import ProviderError
from sluice.domain.items import (
    AlreadyFinished,
    Claimed,
    ItemRecord,
    ItemState,
    LeaseHeld,
    Transition,
    after_error,
    succeed,
)

log = logging.getLogger(__name__)

# The work of one item: its input and its job's params in, its result out; ProviderError if not.
Work = Callable[[Any, dict[str, Any]], dict[str, Any]]


class RedeliverLater(Exception):
    """Raised to have Pub/Sub deliver the message again: the item is not finished yet."""


@dataclass(frozen=True)
class Outcome:
    item: str
    state: str
    detail: str = ""


def process_item(
    store: JobStore,
    work: Work,
    job_id: str,
    item_id: str,
    *,
    lease_seconds: int,
    max_attempts: int,
) -> Outcome:
    token = uuid.uuid4().hex
    claimed = store.claim_item(
        job_id, item_id, token=token, lease_seconds=lease_seconds, max_attempts=max_attempts
    )
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
        store.complete_if_done(job_id)
        return Outcome(item_id, decision.after.value, "lease expired too often")
    assert isinstance(decision, Claimed)

    decide: Callable[[ItemRecord], Transition]
    try:
        result = work(claimed.input, store.job_params(job_id))
        decide = partial(succeed, result=result, now=now())
    except ProviderError as error:
        decide = partial(
            after_error,
            reason=str(error),
            permanent=error.permanent,
            max_attempts=max_attempts,
            now=now(),
        )

    change = store.finish_item(job_id, item_id, token=token, decide=decide)
    if change is None:
        return Outcome(item_id, "superseded", "another delivery took the item over")
    if change.after is ItemState.QUEUED:
        raise RedeliverLater(f"item {item_id}: {change.fields['error']}")
    store.complete_if_done(job_id)
    return Outcome(item_id, change.after.value)
