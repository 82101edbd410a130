"""The sweeper and the dead-letter consumers, through functions-framework on the emulators:
real push bodies in, Firestore documents and published messages out."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta

import pytest
import yaml
from google.cloud import pubsub_v1  # type: ignore[attr-defined]

from localcloud.cloud import merge
from sluice.adapters.intake_store import NewItem
from sluice.topology import REPO_TOPOLOGY
from testkit.pushes import push_body
from testkit.stores import Stores, stores

TOPICS = ["work-items", "batch-events"]


@pytest.fixture
def taps(project):
    """A pull subscription on each topic the processor publishes to: what it sent, by topic."""
    publisher, subscriber = pubsub_v1.PublisherClient(), pubsub_v1.SubscriberClient()
    for topic in TOPICS:
        publisher.create_topic(name=publisher.topic_path(project, topic))
        subscriber.create_subscription(
            name=subscriber.subscription_path(project, f"tap-{topic}"),
            topic=publisher.topic_path(project, topic),
        )

    def sent(topic: str) -> list[dict]:
        subscription = subscriber.subscription_path(project, f"tap-{topic}")
        response = subscriber.pull(subscription=subscription, max_messages=100, timeout=10)
        if response.received_messages:  # taken: a later call sees only what was sent since
            subscriber.acknowledge(
                subscription=subscription, ack_ids=[m.ack_id for m in response.received_messages]
            )
        return sorted(
            (json.loads(m.message.data) for m in response.received_messages),
            key=lambda m: json.dumps(m, sort_keys=True),
        )

    yield sent
    subscriber.close()


@pytest.fixture
def store(db) -> Stores:
    store = stores(db, shards=2)
    job = {"tenant": "t", "total": 3, "state": "open", "intake": "published", "params": {},
           "fingerprint": "f"}  # fmt: skip
    store.intake.create_job("job1", job)
    items = [NewItem(f"item{n}", n, f"input {n}") for n in range(3)]
    store.intake.write_items("job1", items, at=datetime.now(UTC))
    return store


@pytest.fixture
def stall_one_second(tmp_path, monkeypatch):
    # The stall time must exceed the work items' retry backoff (the topology check).
    no_backoff = {"minimum_backoff_seconds": 0, "maximum_backoff_seconds": 0}
    topology = merge(yaml.safe_load(REPO_TOPOLOGY.read_text()), {
        "work": {"stall_seconds": 1},
        "subscriptions": {"work-items-to-processor": {"retry": no_backoff}},
    })  # fmt: skip
    (tmp_path / "topology.yaml").write_text(yaml.safe_dump(topology))
    monkeypatch.setenv("SLUICE_TOPOLOGY", str(tmp_path / "topology.yaml"))


def post(client, project: str, topic: str, payload: dict, attributes: dict | None = None) -> int:
    body = push_body(json.dumps(payload).encode(), topic=topic, attributes=attributes)
    return client.post(f"/projects/{project}/topics/{topic}", json=body).status_code


DEAD_LETTERED = {
    "CloudPubSubDeadLetterSourceDeliveryCount": "20",
    "CloudPubSubDeadLetterSourceSubscription": "work-items-to-processor",
}


def test_a_dead_lettered_item_fails_with_the_reason_and_can_complete_its_batch(
    function_client, project, store, taps
):
    for n in (1, 2):
        store.paths.item_ref("job1", f"item{n}").update({"state": "succeeded", "result": {}})
    store.paths.shard_refs("job1")[0].set({"queued": -2, "succeeded": 2}, merge=True)
    client = function_client("batch-item-processor")

    message = {"job_id": "job1", "item_id": "item0"}
    assert post(client, project, "work-items-dead-letter", message, DEAD_LETTERED) == 200

    item = store.paths.item_ref("job1", "item0").get().to_dict()
    assert item["state"] == "failed"
    assert item["error"] == "dead-lettered: work-items-to-processor gave up after 20 deliveries"
    job = store.jobs.get_job("job1")
    assert job["state"] == "completed"
    assert taps("batch-events") == [{"type": "batch.completed", "job_id": "job1", "completion": 1}]

    # The same dead letter again changes nothing and announces nothing.
    assert post(client, project, "work-items-dead-letter", message, DEAD_LETTERED) == 200
    assert store.paths.item_ref("job1", "item0").get().to_dict() == item
    assert taps("batch-events") == []


def test_a_dead_letter_leaves_finished_and_live_leased_items_alone(function_client, project, store):
    until = datetime.now(UTC) + timedelta(minutes=5)
    store.paths.item_ref("job1", "item0").update({"state": "succeeded", "result": {"content": "x"}})
    store.paths.item_ref("job1", "item1").update(
        {"state": "running", "attempts": 1, "lease": {"token": "w", "until": until}}
    )
    client = function_client("batch-item-processor")
    for item_id in ("item0", "item1"):
        message = {"job_id": "job1", "item_id": item_id}
        assert post(client, project, "work-items-dead-letter", message, DEAD_LETTERED) == 200
    assert store.paths.item_ref("job1", "item0").get().to_dict()["state"] == "succeeded"
    assert store.paths.item_ref("job1", "item1").get().to_dict()["lease"]["token"] == "w"


def test_a_dead_lettered_callback_is_recorded_failed(function_client, project, store):
    store.paths.job_ref("job1").update(
        {"state": "completed", "callback": {"completion": 1, "state": "pending"}}
    )
    attributes = {
        "CloudPubSubDeadLetterSourceDeliveryCount": "50",
        "CloudPubSubDeadLetterSourceSubscription": "batch-events-to-processor",
    }
    client = function_client("batch-item-processor")
    message = {"type": "batch.completed", "job_id": "job1", "completion": 1}
    assert post(client, project, "batch-events-dead-letter", message, attributes) == 200
    callback = store.jobs.get_job("job1")["callback"]
    assert callback["state"] == "failed"
    assert (
        callback["error"] == "dead-lettered: batch-events-to-processor gave up after 50 deliveries"
    )


def test_the_sweeper_takes_over_dead_workers_items_and_leaves_a_moving_batch_alone(
    function_client, project, store, taps
):
    now = datetime.now(UTC)
    store.paths.item_ref("job1", "item0").update(
        {"state": "running", "attempts": 1, "lease": {"token": "dead", "until": now}}
    )
    store.paths.item_ref("job1", "item1").update(
        {
            "state": "running",
            "attempts": 1,
            "lease": {"token": "alive", "until": now + timedelta(minutes=5)},
        }
    )
    client = function_client("batch-item-processor")
    assert post(client, project, "sweeps", {"type": "sweep"}) == 200
    # The expired lease gets a new message; the live one and the queued item of a batch that
    # progressed within stall_seconds (120 s) do not.
    (sent,) = taps("work-items")
    assert (sent["job_id"], sent["item_id"]) == ("job1", "item0")
    # Stamped with a dispatch the item records: it supersedes the dead worker's message.
    assert sent["dispatch"] == store.paths.item_ref("job1", "item0").get().to_dict()["dispatch"] > 0


def test_a_message_the_sweeper_superseded_ends_without_work_and_the_new_one_works(
    function_client, project, store, taps, stall_one_second
):
    time.sleep(1.2)  # no progress for stall_seconds: the queued items get new messages
    client = function_client("batch-item-processor")
    assert post(client, project, "sweeps", {"type": "sweep"}) == 200
    newer = {m["item_id"]: m for m in taps("work-items")}
    assert sorted(newer) == ["item0", "item1", "item2"]
    before = store.paths.item_ref("job1", "item0").get()
    # The old message (the intake's, dispatch 0), still waiting for capacity somewhere, comes
    # again: acknowledged, nothing re-published, the item untouched.
    assert post(client, project, "work-items", {"job_id": "job1", "item_id": "item0"}) == 200
    assert taps("work-items") == []
    after = store.paths.item_ref("job1", "item0").get()
    assert after.update_time == before.update_time
    # The new one is worked on (this provider cannot be reached: a counted attempt, redelivery).
    assert post(client, project, "work-items", newer["item0"]) == 503
    assert store.paths.item_ref("job1", "item0").get().to_dict()["attempts"] == 1
    # And a superseded message that Pub/Sub gave up on does not fail an item a newer one carries.
    assert post(client, project, "work-items-dead-letter",
                {"job_id": "job1", "item_id": "item1"}, DEAD_LETTERED) == 200  # fmt: skip
    assert store.paths.item_ref("job1", "item1").get().to_dict()["state"] == "queued"


def test_the_sweeper_republishes_a_stalled_batchs_queued_items_and_pending_callbacks(
    function_client, project, store, taps, stall_one_second, db
):
    other = stores(db, shards=2)
    # A callback no delivery touched for longer than a live chain stays silent (ack deadline +
    # maximum backoff, 30 + 600 s): its message was lost. And one whose chain is retrying, in
    # its backoff: the sweeper leaves it to that chain.
    long_ago, a_minute_ago = (
        datetime.now(UTC) - timedelta(hours=1),
        datetime.now(UTC) - timedelta(minutes=1),
    )
    other.intake.create_job("done", {"tenant": "t", "total": 1, "state": "completed",
                              "completed_at": long_ago, "fingerprint": "f",
                              "callback": {"completion": 2, "state": "pending"}})  # fmt: skip
    other.intake.create_job("retrying", {"tenant": "t", "total": 1, "state": "completed",
                                  "completed_at": long_ago, "fingerprint": "f",
                                  "callback": {"completion": 1, "state": "pending", "chain": "m1",
                                               "delivered_at": a_minute_ago}})  # fmt: skip
    # A WhatsApp day is not the sweeper's: each message has the live event that created it.
    other.intake.create_job("day", {"tenant": "t", "total": 0, "state": "open", "open_ended": True,
                             "intake": "published", "fingerprint": "f"})  # fmt: skip
    other.intake.write_items("day", [NewItem("m", 0, "x")], at=datetime.now(UTC))
    time.sleep(1.2)  # no progress for stall_seconds
    client = function_client("batch-item-processor")
    assert post(client, project, "sweeps", {"type": "sweep"}) == 200
    sent = taps("work-items")
    assert [(m["job_id"], m["item_id"]) for m in sent] == [("job1", f"item{n}") for n in range(3)]
    assert taps("batch-events") == [{"type": "batch.completed", "job_id": "done", "completion": 2}]
    assert other.jobs.get_job("done")["callback"]["sent_again_at"] is not None
    # The items and callbacks it sent messages for are stamped: the next sweep leaves them to
    # those messages.
    assert post(client, project, "sweeps", {"type": "sweep"}) == 200
    assert taps("work-items") == []
    assert taps("batch-events") == []


def test_the_sweeper_finishes_a_written_intake_and_abandons_a_half_written_one(
    function_client, project, taps, db
):
    """Two submissions answered 503 and never retried: tenant B's stopped half way through
    writing two hours ago, tenant C's had written every item. Tenant A's batch is live."""
    store = stores(db, shards=2)
    long_ago = datetime.now(UTC) - timedelta(hours=2)
    base = {"state": "open", "params": {}, "fingerprint": "f", "updated_at": long_ago}
    store.intake.create_job("a", {**base, "tenant": "A", "total": 2, "intake": "published"})
    store.intake.write_items("a", [NewItem(f"a{n}", n, "x") for n in range(2)], at=long_ago)
    store.intake.create_job("b", {**base, "tenant": "B", "total": 1000, "intake": "writing"})
    store.intake.write_items("b", [NewItem("b0", 0, "x")], at=long_ago)
    store.intake.create_job("c", {**base, "tenant": "C", "total": 2, "intake": "items_written"})
    store.intake.write_items("c", [NewItem(f"c{n}", n, "x") for n in range(2)], at=long_ago)
    # Before the sweep already: B's thousand items that were never published are no backlog,
    # so they do not halve A's share of bulk capacity; neither are C's.
    assert store.jobs.tenant_backlogs() == {"A": 2}

    client = function_client("batch-item-processor")
    assert post(client, project, "sweeps", {"type": "sweep"}) == 200
    assert taps("work-items") == [
        {"job_id": "c", "item_id": f"c{n}", "dispatch": 0} for n in range(2)
    ]
    assert store.jobs.get_job("c")["intake"] == "published"
    assert store.jobs.get_job("b")["intake"] == "abandoned"
    assert store.jobs.tenant_backlogs() == {"A": 2, "C": 2}
    # Nothing more to do at the next sweep.
    assert post(client, project, "sweeps", {"type": "sweep"}) == 200
    assert taps("work-items") == []
