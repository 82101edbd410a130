"""backfill: Firestore trigger on export writes (jobs/{job}/exports/{export})."""

import logging

import functions_framework
from cloudevents.http import CloudEvent

from sluice import logs, wiring
from sluice.events import BadEvent, document_change
from sluice.handlers.exports import on_export_written

logs.configure()

log = logging.getLogger("backfill")


@functions_framework.cloud_event
def backfill(cloud_event: CloudEvent) -> None:
    try:
        change = document_change(cloud_event)
    except BadEvent as exc:
        log.error("acknowledging an undecodable event %s: %s", cloud_event["id"], exc)
        return
    log.info("%s", on_export_written(wiring.sheets_deps(), change))
