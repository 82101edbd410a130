"""A pipeline's steps through the processor function, from what an earlier delivery recorded: a
step that must not be repeated, a remote job waiting for its next poll, a poll delivered often."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
from google.cloud import pubsub_v1  # type: ignore[attr-defined]

from sluice.adapters.intake_store import NewItem
from sluice.handlers.processor import IN_DOUBT, POLL_RESTART_AFTER
from sluice.messages import BATCH_EVENTS, JOB_POLLS
from testkit.pushes import push_body
from testkit.stores import Stores, stores
from testkit.topologies import mutated

# A reply sent once: compose, then send, which is not repeatable.
SEND_ONCE = {
    "description": "compose, then send once",
    "steps": {
        "compose": {"provider": "ai", "call": "chat",
                    "messages": [{"role": "user", "content": "{{ input }}"}]},
        "send": {"provider": "ai", "call": "http", "after": ["compose"], "repeatable": False,
                 "request": {"path": "/v1/send", "body": {"text": "{{ steps.compose.content }}"}}},
    },
}  # fmt: skip


@pytest.fixture
def topology(tmp_path, monkeypatch):
    path = tmp_path / "topology.yaml"
    path.write_text(mutated({"kinds.send-once": SEND_ONCE}))
    monkeypatch.setenv("SLUICE_TOPOLOGY", str(path))


def seeded(db, kind: str, doc: dict) -> Stores:
    """Job job1 of `kind`, with one item changed by `doc`; and the topic its completion goes to."""
    publisher = pubsub_v1.PublisherClient()
    publisher.create_topic(name=publisher.topic_path(db.project, BATCH_EVENTS))
    store = stores(db, shards=2)
    job = {"tenant": "t", "total": 1, "state": "open", "fingerprint": "f", "params": {},
           "kind": kind}  # fmt: skip
    store.intake.create_job("job1", job)
    store.intake.write_items("job1", [NewItem("item1", 0, "hello")], at=datetime.now(UTC))
    store.paths.item_ref("job1", "item1").update(doc)
    return store


def deliver(client, project: str, topic: str = "work-items", attempt: int | None = None) -> int:
    body = push_body(json.dumps({"job_id": "job1", "item_id": "item1"}).encode(), topic=topic)
    if attempt is not None:
        body["deliveryAttempt"] = attempt
    return client.post(f"/projects/{project}/topics/{topic}", json=body).status_code


def running_job() -> dict:
    """A video job's record as its start left it: running, its next poll ten minutes away."""
    now = datetime.now(UTC)
    return {"slot": [0, "t0"], "task": "task-1", "starting": now, "started_at": now,
            "poll_at": now + timedelta(minutes=10)}  # fmt: skip


def died_holding(progress: dict) -> dict:
    """An item whose worker died mid-work: running, its lease run out, what it recorded kept."""
    past = datetime.now(UTC) - timedelta(minutes=5)
    return {"state": "running", "attempts": 1, "lease": {"token": "dead", "until": past},
            "progress": progress}  # fmt: skip


def failed_once_delivered(function_client, project: str, store: Stores) -> dict:
    """The item after one delivery of its work item, which failed it (acknowledged)."""
    client = function_client("batch-item-processor")
    assert deliver(client, project) == 200
    item = store.paths.item_ref("job1", "item1").get().to_dict()
    assert item["state"] == "failed"
    return item


def test_a_step_that_must_not_be_repeated_and_was_left_in_doubt_fails_its_item_saying_so(
    function_client, project, topology, db
):
    started = datetime.now(UTC) - timedelta(minutes=6)
    store = seeded(db, "send-once", died_holding({
        "steps": {"compose": {"content": "hi"}}, "started": {"send": started},
    }))  # fmt: skip
    item = failed_once_delivered(function_client, project, store)
    assert item["error"] == f"step send: {IN_DOUBT}"
    # The step that succeeded stays recorded.
    assert item["progress"]["steps"] == {"compose": {"content": "hi"}}


def test_a_remote_job_whose_id_a_crash_lost_is_started_again_only_if_repeatable(
    function_client, project, db, tmp_path, monkeypatch
):
    path = tmp_path / "topology.yaml"
    path.write_text(mutated({"kinds.staging.steps.video.repeatable": False}))
    monkeypatch.setenv("SLUICE_TOPOLOGY", str(path))
    done = {name: {"content": name} for name in ("layout", "verify")}
    done["stage"] = {"data": [{"url": "https://img/1.png"}]}
    store = seeded(db, "staging", died_holding({
        "steps": done, "jobs": {"video": {"slot": [0, "t0"], "starting": datetime.now(UTC)}},
    }))  # fmt: skip
    item = failed_once_delivered(function_client, project, store)
    assert item["error"] == f"step video: {IN_DOUBT}"


def test_a_job_polled_before_its_time_waits_without_a_call_or_an_attempt(
    function_client, project, db
):
    record = running_job()
    store = seeded(db, "staging", {"attempts": 2, "progress": {
        "steps": {"layout": {}, "stage": {}, "verify": {}}, "jobs": {"video": record},
    }})  # fmt: skip
    client = function_client("batch-item-processor")
    # A nack: the poll comes again on the job-polls subscription's backoff.
    assert deliver(client, project, topic=JOB_POLLS, attempt=3) == 503
    item = store.paths.item_ref("job1", "item1").get().to_dict()
    assert (item["state"], item["attempts"]) == ("queued", 2)
    assert "job task-1 running, next poll at" in item["error"]
    assert item["progress"]["jobs"]["video"]["poll_at"] == record["poll_at"]


def test_a_poll_delivered_often_is_published_afresh_before_pub_sub_would_dead_letter_it(
    function_client, project, db
):
    record = running_job()
    seeded(db, "staging", {"progress": {"steps": {"layout": {}, "stage": {}, "verify": {}},
                                        "jobs": {"video": record}}})  # fmt: skip
    publisher, subscriber = pubsub_v1.PublisherClient(), pubsub_v1.SubscriberClient()
    topic = publisher.topic_path(project, JOB_POLLS)
    publisher.create_topic(name=topic)
    tap = subscriber.subscription_path(project, "tap")
    subscriber.create_subscription(name=tap, topic=topic)

    client = function_client("batch-item-processor")
    # Acknowledged, and the same poll published again: its delivery count starts over.
    assert deliver(client, project, topic=JOB_POLLS, attempt=POLL_RESTART_AFTER) == 200
    pulled = subscriber.pull(subscription=tap, max_messages=10, timeout=30)
    assert [json.loads(m.message.data) for m in pulled.received_messages] == [
        {"job_id": "job1", "item_id": "item1"}
    ]
