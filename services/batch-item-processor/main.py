"""batch-item-processor: one Pub/Sub push delivery at a time.

Returning acknowledges the message; an exception makes functions-framework answer 500, and Pub/Sub
delivers the message again after the subscription's backoff.
"""

import logging

import functions_framework
from cloudevents.http import CloudEvent

from sluice import logs
from sluice.events import BadEvent, pubsub_message
from sluice.handlers.messages import handle_message

logs.configure()

log = logging.getLogger("batch-item-processor")


@functions_framework.cloud_event
def batch_item_processor(cloud_event: CloudEvent) -> None:
    try:
        message = pubsub_message(cloud_event)
    except BadEvent as exc:
        log.error("acknowledging an undecodable delivery %s: %s", cloud_event["id"], exc)
        return
    outcome = handle_message(message)
    log.info("%s", outcome)
