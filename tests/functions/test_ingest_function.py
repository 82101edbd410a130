"""webhook-ingest through functions-framework, on the emulators."""

from __future__ import annotations

import os
import time
from datetime import UTC, datetime, timedelta

import yaml
from google.cloud import pubsub_v1  # type: ignore[attr-defined]

from localcloud.cloud import merge
from localcloud.processes import free_port
from sluice.adapters.intake_store import NewItem
from sluice.domain.batches import fingerprint, item_ids, job_id_for, parse_batch
from sluice.topology import REPO_TOPOLOGY
from testkit.client import bearer
from testkit.stores import stores

BATCH = {"kind": "chat", "items": [{"input": "a"}, {"input": "b"}]}


def test_pubsub_down_is_a_503_and_a_retry_with_the_key_finishes_the_batch(
    function_client, make_tenant, monkeypatch, tmp_path, db, project
):
    key = make_tenant().api_key
    topology = merge(yaml.safe_load(REPO_TOPOLOGY.read_text()),
                     {"api": {"publish_timeout_seconds": 1}})  # fmt: skip
    (tmp_path / "topology.yaml").write_text(yaml.safe_dump(topology))
    monkeypatch.setenv("SLUICE_TOPOLOGY", str(tmp_path / "topology.yaml"))
    working_pubsub = os.environ["PUBSUB_EMULATOR_HOST"]
    headers = {**bearer(key), "Idempotency-Key": "k1"}

    # Nothing listens on this port: Pub/Sub is down.
    monkeypatch.setenv("PUBSUB_EMULATOR_HOST", f"127.0.0.1:{free_port()}")
    down = function_client("webhook-ingest").post("/v1/batches", json=BATCH, headers=headers)
    assert down.status_code == 503
    assert down.headers["Retry-After"]
    assert down.headers["content-type"] == "application/problem+json"
    (job,) = list(db.collection("jobs").stream())
    assert job.get("intake") == "items_written"  # stored, not yet published: not accepted

    monkeypatch.setenv("PUBSUB_EMULATOR_HOST", working_pubsub)
    publisher = pubsub_v1.PublisherClient()
    publisher.create_topic(name=publisher.topic_path(project, "work-items"))
    retried = function_client("webhook-ingest").post("/v1/batches", json=BATCH, headers=headers)
    assert retried.status_code == 202
    assert retried.json["batch_id"] == job.id
    assert db.collection("jobs").document(job.id).get().get("intake") == "published"


def test_a_key_in_flight_is_a_409_with_retry_after_and_a_dead_owner_is_taken_over(
    function_client, make_tenant, db, project
):
    """A first request took the intake and died (its lease below runs out in a few seconds)."""
    tenant = make_tenant()
    headers = {**bearer(tenant.api_key), "Idempotency-Key": "order-7"}
    publisher = pubsub_v1.PublisherClient()
    publisher.create_topic(name=publisher.topic_path(project, "work-items"))
    job_id = job_id_for(tenant.id, "order-7")
    batch = parse_batch(BATCH, kinds=["chat"], default_kind="chat", max_batch_items=10,
                        max_item_input_bytes=100)  # fmt: skip
    dead = {"tenant": tenant.id, "kind": "chat", "params": {}, "total": 2, "state": "open",
            "fingerprint": fingerprint(batch)}  # fmt: skip
    store = stores(db, shards=8)
    store.intake.open_intake(job_id, dead, owner="died", lease=timedelta(seconds=3))
    store.intake.write_items(
        job_id, [NewItem(item_ids(job_id, batch)[0], 0, "a")], at=datetime.now(UTC)
    )

    client = function_client("webhook-ingest")
    busy = client.post("/v1/batches", json=BATCH, headers=headers)
    assert busy.status_code == 409
    assert busy.headers["content-type"] == "application/problem+json"
    assert busy.json["title"] == "Request in flight"
    assert list(db.collection("jobs").document(job_id).collection("items").stream()) != []

    # As a client would: come back after Retry-After until the dead owner's lease has run out.
    for _ in range(5):
        assert 1 <= int(busy.headers["Retry-After"]) <= 2
        time.sleep(int(busy.headers["Retry-After"]))
        taken_over = client.post("/v1/batches", json=BATCH, headers=headers)
        if taken_over.status_code != 409:
            break
        busy = taken_over
    assert taken_over.status_code == 202, taken_over.json
    assert taken_over.json["batch_id"] == job_id
    job = db.collection("jobs").document(job_id).get().to_dict()
    assert job["intake"] == "published" and job["intake_lease"] is None
    items = db.collection("jobs").document(job_id).collection("items").stream()
    assert sorted(i.get("input") for i in items) == ["a", "b"]
    # Accepted once and for all: the same request again is answered at once.
    assert client.post("/v1/batches", json=BATCH, headers=headers).status_code == 202


def test_a_batch_naming_no_kind_is_the_default_kind_s_and_the_same_as_naming_it(
    function_client, make_tenant, db, project
):
    publisher = pubsub_v1.PublisherClient()
    publisher.create_topic(name=publisher.topic_path(project, "work-items"))
    headers = {**bearer(make_tenant().api_key), "Idempotency-Key": "no-kind"}
    ingest = function_client("webhook-ingest")

    unnamed = ingest.post("/v1/batches", json={"items": BATCH["items"]}, headers=headers)
    assert unnamed.status_code == 202
    job = db.collection("jobs").document(unnamed.json["batch_id"]).get()
    assert job.get("kind") == "chat"
    # Naming the default kind is the same submission, not a reused key with another body.
    named = ingest.post("/v1/batches", json=BATCH, headers=headers)
    assert named.status_code == 202 and named.json["batch_id"] == job.id
