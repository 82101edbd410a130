"""The processor's Pub/Sub deliveries, dispatched by the topic they came from."""

from __future__ import annotations

import logging
from datetime import timedelta

from pydantic import ValidationError

from sluice import wiring
from sluice.adapters.jobs_store import now
from sluice.events import PubSubMessage
from sluice.handlers.callbacks import send_completion_callback
from sluice.handlers.dead_letters import handle_dead_letter
from sluice.handlers.processor import (
    Deferred,
    Outcome,
    process_item,
    without_progress,
)
from sluice.handlers.sweeper import IntakeTimes, sweep
from sluice.handlers.whatsapp import handle_event
from sluice.messages import (
    BATCH_EVENTS,
    SWEEPS,
    WHATSAPP_EVENTS,
    WORK_ITEMS,
    BatchCompleted,
    Sweep,
    WhatsAppEventMessage,
    WorkItem,
)

log = logging.getLogger(__name__)


def handle_message(message: PubSubMessage) -> Outcome | None:
    try:
        return _dispatch(message)
    except ValidationError as exc:
        # Redelivery cannot make an unreadable message readable: acknowledge it.
        # The fields at fault, without their values: a message may carry what a customer wrote.
        fields = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        log.error("unreadable message %s acknowledged: %s", message.message_id, fields)
        return None


def _dispatch(message: PubSubMessage) -> Outcome | None:
    topology = wiring.settings().topology
    limits = topology.work
    if message.topic == WORK_ITEMS:
        return _work_item(WorkItem.model_validate_json(message.data))
    if message.topic == WHATSAPP_EVENTS:
        event = WhatsAppEventMessage.model_validate_json(message.data)
        return handle_event(
            wiring.whatsapp_deps(),
            event,
            lease_seconds=limits.lease_seconds,
            max_attempts=limits.max_attempts,
        )
    if message.topic == BATCH_EVENTS:
        (delivery,) = (s for s in topology.subscriptions.values() if s.topic == BATCH_EVENTS)
        return send_completion_callback(
            wiring.job_store(),
            wiring.callback_sender(),
            wiring.capacity("callbacks", interactive=False),
            BatchCompleted.model_validate_json(message.data),
            chain=message.message_id,
            quiet=timedelta(seconds=topology.quiet_after(BATCH_EVENTS)),
            lease=timedelta(seconds=delivery.ack_deadline_seconds),
            backoff=timedelta(seconds=delivery.retry.minimum_backoff_seconds),
        )
    if message.topic == SWEEPS:
        Sweep.model_validate_json(message.data or b"{}")
        return sweep(
            wiring.job_store(),
            wiring.publisher(),
            wiring.export_store(),
            wiring.whatsapp_deps(),
            now=now(),
            stall=timedelta(seconds=limits.stall_seconds),
            callback_quiet=timedelta(seconds=topology.quiet_after(BATCH_EVENTS)),
            export_lease=timedelta(seconds=topology.exports.lease_seconds),
            # A head parked more recently than a capacity wait may be being tried right now.
            parked_idle=timedelta(seconds=limits.capacity_wait_seconds),
            intakes=IntakeTimes(
                lease=timedelta(seconds=topology.api.intake_lease_seconds),
                abandon_after=timedelta(seconds=topology.api.intake_abandon_seconds),
            ),
        )
    source = topology.dead_letter_source(message.topic)
    if source is not None:
        outcome = handle_dead_letter(wiring.job_store(), wiring.whatsapp_deps(), source, message)
        if outcome is not None:
            announce_completion(outcome.job, outcome)
        return outcome
    # Redelivery cannot fix a subscription pointed at the wrong function: acknowledge.
    log.error("no handler for topic %r (message %s)", message.topic, message.message_id)
    return None


def _work_item(work: WorkItem) -> Outcome:
    limits = wiring.settings().topology.work
    try:
        outcome = process_item(
            wiring.job_store(),
            without_progress(wiring.ai_provider().complete),
            work.job_id,
            work.item_id,
            lease_seconds=limits.lease_seconds,
            max_attempts=limits.max_attempts,
            capacity=wiring.capacity("ai", interactive=False),
            dispatch=work.dispatch,
        )
    except Deferred as deferred:
        # Not a failure: acknowledge and publish the item again, so that waiting for capacity
        # never counts as a delivery attempt and never slows the subscription with nacks. The
        # same dispatch: it is the same message, moved to the back of the queue.
        wiring.publisher().publish(WORK_ITEMS, [work.model_dump()])
        return Outcome(work.item_id, "deferred", str(deferred))
    announce_completion(work.job_id, outcome)
    return outcome


def announce_completion(job_id: str, outcome: Outcome) -> None:
    if outcome.completed is not None:
        # Raising here would not bring the event back (the item is finished); a lost publish
        # leaves the job's callback `pending`, which the sweeper republishes.
        completed = BatchCompleted(job_id=job_id, completion=outcome.completed)
        wiring.publisher().publish(BATCH_EVENTS, [completed.model_dump()])
