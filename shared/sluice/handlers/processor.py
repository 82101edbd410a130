"""Processing one work item: claim it, call the provider, record the outcome, close the job.

What happens next is said by how this returns: returning acknowledges the message; raising has
Pub/Sub deliver it again (after the subscription's backoff). A repeated delivery of a finished item
is acknowledged and does nothing; one of an item another worker is on is delivered again later.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

from sluice.adapters.ai_provider import AIProvider, ProviderError
from sluice.adapters.jobs_store import JobStore, now
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
from sluice.messages import WorkItem

log = logging.getLogger(__name__)


class RedeliverLater(Exception):
    """Raised to have Pub/Sub deliver the message again: the item is not finished yet."""


@dataclass(frozen=True)
class Outcome:
    item: str
    state: str
    detail: str = ""


def process_item(
    store: JobStore,
    provider: AIProvider,
    message: WorkItem,
    *,
    lease_seconds: int,
    max_attempts: int,
) -> Outcome:
    token = uuid.uuid4().hex
    claimed = store.claim_item(
        message.job_id,
        message.item_id,
        token=token,
        lease_seconds=lease_seconds,
        max_attempts=max_attempts,
    )
    if claimed is None:
        # Nothing to do, ever: a message for an item that does not exist is acknowledged.
        log.error("work item %s/%s does not exist", message.job_id, message.item_id)
        return Outcome(message.item_id, "missing")
    decision = claimed.decision
    if isinstance(decision, AlreadyFinished):
        return Outcome(message.item_id, decision.state.value, "duplicate delivery")
    if isinstance(decision, LeaseHeld):
        raise RedeliverLater(f"item {message.item_id} is leased until {decision.until}")
    if isinstance(decision, Transition):
        store.complete_if_done(message.job_id)
        return Outcome(message.item_id, decision.after.value, "lease expired too often")
    assert isinstance(decision, Claimed)

    params = store.job_params(message.job_id)
    decide: Callable[[ItemRecord], Transition]
    try:
        result = provider.complete(claimed.input, params)
        decide = partial(succeed, result=result, now=now())
    except ProviderError as error:
        decide = partial(
            after_error,
            reason=str(error),
            permanent=error.permanent,
            max_attempts=max_attempts,
            now=now(),
        )

    change = store.finish_item(message.job_id, message.item_id, token=token, decide=decide)
    if change is None:
        return Outcome(message.item_id, "superseded", "another delivery took the item over")
    if change.after is ItemState.QUEUED:
        raise RedeliverLater(f"item {message.item_id}: {change.fields['error']}")
    store.complete_if_done(message.job_id)
    return Outcome(message.item_id, change.after.value)
