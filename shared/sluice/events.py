"""Decoding the events the event functions receive, into one typed input each."""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from typing import Any

from cloudevents.http import CloudEvent
from google.api_core.datetime_helpers import DatetimeWithNanoseconds
from google.events.cloud.firestore import DocumentEventData
from google.protobuf.json_format import MessageToDict
from google.protobuf.message import DecodeError


class BadEvent(ValueError):
    """An event that can never be processed: acknowledge it, do not have it redelivered."""


@dataclass(frozen=True)
class PubSubMessage:
    topic: str
    data: bytes
    attributes: dict[str, str]
    message_id: str


def pubsub_message(event: CloudEvent) -> PubSubMessage:
    """A push delivery, as functions-framework turns it into a CloudEvent. The topic comes from
    the source: the push endpoint's path names it (`.../projects/P/topics/T`), as Eventarc does."""
    source = event["source"] or ""
    topic = source.rsplit("/topics/", 1)[-1] if "/topics/" in source else ""
    message = (event.data or {}).get("message", event.data) or {}
    try:
        data = base64.b64decode(message.get("data", ""), validate=True)
    except (binascii.Error, TypeError):
        raise BadEvent("message data is not base64") from None
    return PubSubMessage(topic, data, dict(message.get("attributes") or {}), event["id"])


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
