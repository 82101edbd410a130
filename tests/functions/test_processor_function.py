"""batch-item-processor through functions-framework: raw Pub/Sub push bodies, as Pub/Sub sends."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
from google.cloud import pubsub_v1  # type: ignore[attr-defined]

from sluice.adapters.intake_store import NewItem
from sluice.adapters.limiter import Limiter
from sluice.topology import load_topology
from testkit.pushes import push_body
from testkit.stores import Stores, stores
from testkit.topologies import mutated


@pytest.fixture
def store(db) -> Stores:
    store = stores(db, shards=2)
    job = {"tenant": "t", "total": 1, "state": "open", "fingerprint": "f", "params": {}}
    store.intake.create_job("job1", job)
    store.intake.write_items("job1", [NewItem("item1", 0, "hello")], at=datetime.now(UTC))
    return store


def deliver(client, project: str, payload: dict) -> int:
    data = json.dumps(payload).encode()
    path = f"/projects/{project}/topics/work-items"
    return client.post(path, json=push_body(data)).status_code


def test_a_finished_item_is_acknowledged_and_left_alone(function_client, project, store, db):
    ref = store.paths.item_ref("job1", "item1")
    ref.update({"state": "succeeded", "result": {"content": "first"}})
    client = function_client("batch-item-processor")
    assert deliver(client, project, {"job_id": "job1", "item_id": "item1"}) == 200
    assert ref.get().to_dict()["result"] == {"content": "first"}


def test_an_item_leased_by_another_worker_is_delivered_again_later(function_client, project, store):
    until = datetime.now(UTC) + timedelta(minutes=5)
    store.paths.item_ref("job1", "item1").update(
        {"state": "running", "attempts": 1, "lease": {"token": "other", "until": until}}
    )
    client = function_client("batch-item-processor")
    # A 503 is a nack: Pub/Sub delivers it again after the subscription's backoff.
    assert deliver(client, project, {"job_id": "job1", "item_id": "item1"}) == 503
    assert store.paths.item_ref("job1", "item1").get().to_dict()["lease"]["token"] == "other"


def test_a_provider_that_cannot_be_reached_requeues_the_item_for_redelivery(
    function_client, project, store
):
    client = function_client("batch-item-processor")
    assert deliver(client, project, {"job_id": "job1", "item_id": "item1"}) == 503
    item = store.paths.item_ref("job1", "item1").get().to_dict()
    assert item["state"] == "queued" and item["attempts"] == 1
    assert "provider unreachable" in item["error"]


@pytest.mark.parametrize("payload", [{"job_id": "job1"}, {"unexpected": True}])
def test_an_unreadable_message_is_acknowledged_not_retried_forever(
    function_client, project, store, payload
):
    client = function_client("batch-item-processor")
    assert deliver(client, project, payload) == 200
    assert store.paths.item_ref("job1", "item1").get().to_dict()["state"] == "queued"


def test_an_item_that_finds_no_capacity_is_acknowledged_and_published_again_without_an_attempt(
    function_client, project, store, db, tmp_path, monkeypatch
):
    topology = load_topology()
    (tmp_path / "topology.yaml").write_text(
        mutated({"work.capacity_wait_seconds": 1})  # a short wait for the AI slots
    )
    monkeypatch.setenv("SLUICE_TOPOLOGY", str(tmp_path / "topology.yaml"))
    publisher, subscriber = pubsub_v1.PublisherClient(), pubsub_v1.SubscriberClient()
    topic = publisher.topic_path(project, "work-items")
    publisher.create_topic(name=topic)
    tap = subscriber.subscription_path(project, "tap")
    subscriber.create_subscription(name=tap, topic=topic)
    # Every AI slot held (by replies: bulk work leaves some to them), through a limiter built as
    # every processor instance builds it.
    ai = topology.providers["ai"]
    holder = Limiter(db, "ai", ai, shards=topology.work.rate_shards, recovery_seconds=30)
    held = [holder.acquire(tenant=f"other-{n}", interactive=True, wait=5)
            for n in range(ai.max_concurrent)]  # fmt: skip
    assert all(held)

    client = function_client("batch-item-processor")
    assert deliver(client, project, {"job_id": "job1", "item_id": "item1"}) == 200
    item = store.paths.item_ref("job1", "item1").get().to_dict()
    assert (item["state"], item.get("attempts", 0)) == ("queued", 0)
    (again,) = subscriber.pull(subscription=tap, max_messages=10, timeout=10).received_messages
    assert json.loads(again.message.data) == {"job_id": "job1", "item_id": "item1"}
    subscriber.close()
