"""Decoding events: a Firestore write captured from the emulator, and Pub/Sub pushes."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
from cloudevents.http import CloudEvent, from_http

from sluice.eventarc import BadEvent, document_change
from sluice.push import BadDelivery, decode_push

DATA = Path(__file__).resolve().parents[1] / "data"


def saved_firestore_event() -> CloudEvent:
    saved = json.loads((DATA / "firestore-item-written.json").read_text())
    # Production (Eventarc) sends the raw protobuf; the emulator sends its base64 text.
    return from_http(saved["headers"], base64.b64decode(saved["body_base64"]))


def test_a_firestore_write_decodes_to_the_documents_path_and_fields():
    change = document_change(saved_firestore_event())
    assert change.path == "jobs/j1/items/i1"
    assert change.parts[1] == "j1"
    assert change.before is None
    assert change.after == {"state": "queued", "n": 1}


def test_a_firestore_event_that_is_not_protobuf_is_a_bad_event():
    event = saved_firestore_event()
    event.data = b"\xff\xff not a protobuf"
    with pytest.raises(BadEvent):
        document_change(event)


def test_a_pubsub_push_names_its_subscription_and_carries_its_message():
    body = {
        "message": {"data": base64.b64encode(b'{"a":1}').decode(), "attributes": {"k": "v"},
                    "messageId": "m1", "orderingKey": "conv"},
        "subscription": "projects/p/subscriptions/dev-work-items-to-processor",
        "deliveryAttempt": 3,
    }  # fmt: skip
    delivery = decode_push(body, prefix="dev-")
    assert delivery.subscription == "work-items-to-processor"
    assert delivery.attempt == 3
    message = delivery.message
    assert (message.data, message.attributes, message.message_id, message.ordering_key) == (
        b'{"a":1}', {"k": "v"}, "m1", "conv")  # fmt: skip
    body["message"]["data"] = "!!not base64"
    with pytest.raises(BadDelivery):
        decode_push(body)
    with pytest.raises(BadDelivery):
        decode_push({"message": {"data": ""}})  # no subscription
