"""What Pub/Sub gave up on: each dead-lettered message is recorded as failed, with the reason.

A message lands on its topic's dead-letter topic after its subscription's max_delivery_attempts
failed pushes. Its work will not be done, so the item (or the callback) it carried fails, saying
why, rather than staying `queued` for ever; retry-failed can then send it again. Recording is
idempotent: a finished item is left as it is, and so is one a live lease shows another delivery
of it is working on.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from sluice.adapters.callbacks_store import CallbackStore
from sluice.adapters.items_store import ItemStore
from sluice.adapters.jobs_store import JobStore
from sluice.adapters.publisher import Publisher
from sluice.clock import now
from sluice.domain.items import ItemRecord, Transition, dead_lettered, superseded
from sluice.domain.jobs import CallbackState
from sluice.handlers.processor import announce_completion
from sluice.handlers.whatsapp import WhatsAppDeps, record_message
from sluice.messages import (
    BATCH_EVENTS,
    JOB_POLLS,
    WHATSAPP_EVENTS,
    WORK_ITEMS,
    BatchCompleted,
    WhatsAppEventMessage,
    WorkItem,
)
from sluice.outcomes import Ack
from sluice.push import PubSubMessage

log = logging.getLogger(__name__)


def reason_of(message: PubSubMessage, source: str) -> str:
    # Pub/Sub's own attributes on a dead-lettered message say where it came from and how often
    # its push was tried.
    attempts = message.attributes.get("CloudPubSubDeadLetterSourceDeliveryCount", "?")
    subscription = message.attributes.get("CloudPubSubDeadLetterSourceSubscription", source)
    return f"dead-lettered: {subscription} gave up after {attempts} deliveries"


@dataclass(frozen=True)
class DeadLetterDeps:
    jobs: JobStore
    items: ItemStore
    callbacks: CallbackStore
    publisher: Publisher
    whatsapp: WhatsAppDeps


def fail_item(
    deps: DeadLetterDeps, job_id: str, item_id: str, reason: str, *, dispatch: int | None = None
) -> Ack:
    """`dispatch`: the dead-lettered work-item message's (None for a WhatsApp event)."""

    def decide(item: ItemRecord) -> Transition | None:
        # A superseded message's work is carried by a newer one: its end is not the item's.
        if dispatch is not None and superseded(item, dispatch):
            return None
        return dead_lettered(item, reason=reason, now=at)

    at = now()
    change = deps.items.change_item(job_id, item_id, decide)
    if change is None:
        return Ack(item_id, "unchanged", f"{reason} (already settled)")
    completed = deps.jobs.complete_if_done(job_id) if change.may_finish_job else None
    return Ack(item_id, change.after.value, reason, completed=completed, job=job_id)


def handle_dead_letter(deps: DeadLetterDeps, source: str, message: PubSubMessage) -> Ack:
    """`source` is the topic the message was first published on. Raises ValidationError for a
    message that is not what that topic carries."""
    ack = _record_dead_letter(deps, source, message)
    announce_completion(deps.publisher, ack)
    return ack


def _record_dead_letter(deps: DeadLetterDeps, source: str, message: PubSubMessage) -> Ack:
    reason = reason_of(message, source)
    # Not the message itself: a WhatsApp event carries what a customer wrote.
    log.error("%s: message %s on %s", reason, message.message_id, source)
    if source in (WORK_ITEMS, JOB_POLLS):
        work = WorkItem.model_validate_json(message.data)
        return fail_item(deps, work.job_id, work.item_id, reason, dispatch=work.dispatch)
    if source == WHATSAPP_EVENTS:
        event = WhatsAppEventMessage.model_validate_json(message.data)
        if event.kind != "message":
            return Ack(event.kind, "lost", "a status or an error: nothing was owed to anyone")
        recorded = record_message(deps.whatsapp, event)
        if recorded is None:
            return Ack(str(event.body.get("id")), "dropped", "no tenant has the phone number")
        return fail_item(deps, *recorded, reason)
    if source == BATCH_EVENTS:
        done = BatchCompleted.model_validate_json(message.data)
        deps.callbacks.mark_callback(
            done.job_id, done.completion, CallbackState.FAILED, error=reason
        )
        return Ack(done.job_id, "callback", reason)
    return Ack(message.message_id, "unhandled", f"nothing records dead letters of {source}")
