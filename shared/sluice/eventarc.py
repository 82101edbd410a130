"""Eventarc Firestore triggers, as sheets-writer and backfill receive them: the CloudEvent decoded
into one `DocumentChange`, handed to the function's handler, and its outcome answered the way
Eventarc understands it (see sluice.outcomes): a 2xx acknowledges the event, anything else has it
delivered again, with backoff, for up to a day.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import flask
from cloudevents.http import CloudEvent
from google.api_core.datetime_helpers import DatetimeWithNanoseconds
from google.events.cloud.firestore import DocumentEventData
from google.protobuf.json_format import MessageToDict
from google.protobuf.message import DecodeError

from sluice.outcomes import Ack, Fail, NotDone

log = logging.getLogger(__name__)


class BadEvent(ValueError):
    """An event that can never be processed: acknowledge it, do not have it redelivered."""


@dataclass(frozen=True)
class DocumentChange:
    """A Firestore write: the document's path (`jobs/J/items/I`) and its fields before and after
    (None where the document did not exist)."""

    path: str
    before: dict[str, Any] | None
    after: dict[str, Any] | None
    # The CloudEvent id: the same in every delivery of this change, redeliveries included.
    event_id: str = ""

    @property
    def parts(self) -> list[str]:
        return self.path.split("/")


def document_change(event: CloudEvent) -> DocumentChange:
    """`google.cloud.firestore.document.v1.written`: a DocumentEventData protobuf body."""
    data = event.data
    if not isinstance(data, bytes | bytearray):
        raise BadEvent("a Firestore event carries a protobuf body")
    try:
        decoded = DocumentEventData.deserialize(bytes(data))
    except DecodeError as exc:
        raise BadEvent(f"not a DocumentEventData: {exc}") from None
    after = _fields(decoded.value) if decoded.value and decoded.value.name else None
    before = _fields(decoded.old_value) if decoded.old_value and decoded.old_value.name else None
    path = event.get("document") or event["subject"].removeprefix("documents/")
    return DocumentChange(path, before, after, event_id=str(event["id"] or ""))


def _fields(document: Any) -> dict[str, Any]:
    """Firestore `Value`s as plain Python values (the protobuf's own JSON form, unwrapped)."""
    raw = MessageToDict(type(document).pb(document), preserving_proto_field_name=True)
    return {name: _plain(value) for name, value in raw.get("fields", {}).items()}


def _plain(value: dict[str, Any]) -> Any:
    ((kind, inner),) = value.items()
    if kind == "null_value":
        return None
    if kind == "integer_value":
        return int(inner)
    if kind == "timestamp_value":
        # As the Firestore client reads it, so a value is the same whichever way it arrived.
        return DatetimeWithNanoseconds.from_rfc3339(inner)
    if kind == "map_value":
        return {k: _plain(v) for k, v in inner.get("fields", {}).items()}
    if kind == "array_value":
        return [_plain(v) for v in inner.get("values", [])]
    return inner


def handle(cloud_event: CloudEvent, handler: Callable[[DocumentChange], Ack]) -> None:
    """The body of a Firestore-triggered function: decode, handle, log what became of it.
    Returning acknowledges; a `NotDone` raised is answered by `not_done`."""
    try:
        change = document_change(cloud_event)
    except BadEvent as exc:
        # Redelivery cannot make it readable: acknowledge.
        log.error("acknowledging an undecodable event %s: %s", cloud_event["id"], exc)
        return
    log.info("%s", handler(change))


def not_done(outcome: NotDone) -> flask.Response:
    """What an event that is not done with is answered (registered with functions-framework's
    errorhandler): a line in the log rather than a crash's trace."""
    if isinstance(outcome, Fail):
        log.error("event failed for good, acknowledged: %s", outcome.reason)
        return flask.Response(outcome.reason, status=200, mimetype="text/plain")
    log.info("event to be delivered again: %s", outcome.reason)
    return flask.Response(outcome.reason, status=503, mimetype="text/plain")
