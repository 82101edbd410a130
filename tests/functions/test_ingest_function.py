"""webhook-ingest through functions-framework, on the emulators."""

from __future__ import annotations

import os

import yaml
from google.cloud import pubsub_v1  # type: ignore[attr-defined]

from sluice.localcloud.cloud import merge
from sluice.localcloud.processes import free_port
from sluice.topology import REPO_TOPOLOGY
from tests.conftest import bearer

BATCH = {"kind": "ocr", "items": [{"input": "a"}, {"input": "b"}]}


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
