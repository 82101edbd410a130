"""batch-item-processor through functions-framework: raw Pub/Sub push bodies, as Pub/Sub sends."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta

import pytest

from sluice.adapters.jobs_store import JobStore, NewItem


def push_body(data: bytes, message_id: str = "1") -> dict:
    return {
        "message": {"data": base64.b64encode(data).decode(), "messageId": message_id,
                    "publishTime": "2026-11-21T00:00:00Z", "attributes": {}},
        "subscription": "projects/p/subscriptions/work-items-to-processor",
    }  # fmt: skip


@pytest.fixture
def store(db) -> JobStore:
    store = JobStore(db, shards=2)
    job = {"tenant": "t", "total": 1, "state": "open", "fingerprint": "f", "params": {}}
    store.create_job("job1", job)
    store.write_items("job1", [NewItem("item1", 0, "hello")], at=datetime.now(UTC))
    return store


def deliver(client, project: str, payload: dict) -> int:
    data = json.dumps(payload).encode()
    path = f"/projects/{project}/topics/work-items"
    return client.post(path, json=push_body(data)).status_code


def test_a_finished_item_is_acknowledged_and_left_alone(function_client, project, store, db):
    ref = store.item_ref("job1", "item1")
    ref.update({"state": "succeeded", "result": {"content": "first"}})
    client = function_client("batch-item-processor")
    assert deliver(client, project, {"job_id": "job1", "item_id": "item1"}) == 200
    assert ref.get().to_dict()["result"] == {"content": "first"}


def test_an_item_leased_by_another_worker_is_delivered_again_later(function_client, project, store):
    until = datetime.now(UTC) + timedelta(minutes=5)
    store.item_ref("job1", "item1").update(
        {"state": "running", "attempts": 1, "lease": {"token": "other", "until": until}}
    )
    client = function_client("batch-item-processor")
    # A 500 is a nack: Pub/Sub delivers it again after the subscription's backoff.
    assert deliver(client, project, {"job_id": "job1", "item_id": "item1"}) == 500
    assert store.item_ref("job1", "item1").get().to_dict()["lease"]["token"] == "other"


def test_a_provider_that_cannot_be_reached_requeues_the_item_for_redelivery(
    function_client, project, store
):
    client = function_client("batch-item-processor")
    assert deliver(client, project, {"job_id": "job1", "item_id": "item1"}) == 500
    item = store.item_ref("job1", "item1").get().to_dict()
    assert item["state"] == "queued" and item["attempts"] == 1
    assert "provider unreachable" in item["error"]


@pytest.mark.parametrize("payload", [{"job_id": "job1"}, {"unexpected": True}])
def test_an_unreadable_message_is_acknowledged_not_retried_forever(
    function_client, project, store, payload
):
    client = function_client("batch-item-processor")
    assert deliver(client, project, payload) == 200
    assert store.item_ref("job1", "item1").get().to_dict()["state"] == "queued"
