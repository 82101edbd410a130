"""The processor's Pub/Sub deliveries, dispatched by the topic they came from."""

from __future__ import annotations

import logging

from pydantic import ValidationError

from sluice import wiring
from sluice.events import PubSubMessage
from sluice.handlers.processor import Outcome, process_item
from sluice.messages import WORK_ITEMS, WorkItem

log = logging.getLogger(__name__)


def handle_message(message: PubSubMessage) -> Outcome | None:
    if message.topic != WORK_ITEMS:
        # Redelivery cannot fix a subscription pointed at the wrong function: say so, acknowledge.
        log.error("no handler for topic %r (message %s)", message.topic, message.message_id)
        return None
    try:
        work = WorkItem.model_validate_json(message.data)
    except ValidationError as exc:
        log.error("unreadable work item %s acknowledged: %s", message.message_id, exc)
        return None
    work_settings = wiring.settings().topology.work
    return process_item(
        wiring.job_store(),
        wiring.ai_provider(),
        work,
        lease_seconds=work_settings.lease_seconds,
        max_attempts=work_settings.max_attempts,
    )
