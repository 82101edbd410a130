"""GET /healthz on both HTTP functions, through functions-framework, on the emulators."""

from __future__ import annotations

import pytest
from google.cloud import pubsub_v1  # type: ignore[attr-defined]

from localcloud.processes import free_port
from testkit.topologies import mutated


@pytest.fixture
def work_topic(project):
    publisher = pubsub_v1.PublisherClient()
    publisher.create_topic(name=publisher.topic_path(project, "work-items"))


@pytest.mark.parametrize("function", ["webhook-ingest", "status-api"])
@pytest.mark.parametrize("path", ["/healthz", "/health"])
def test_both_http_functions_report_healthy_dependencies(
    function_client, work_topic, function, path, tmp_path, monkeypatch
):
    # A new process's first calls open their channels: on a loaded machine (the suite runs in
    # several workers) that can outlast the 3 s the deployed check allows. What is checked here
    # is the answer for healthy dependencies, not how long the check may take.
    (tmp_path / "topology.yaml").write_text(mutated({"api.health_timeout_seconds": 30}))
    monkeypatch.setenv("SLUICE_TOPOLOGY", str(tmp_path / "topology.yaml"))
    answer = function_client(function).get(path)
    assert answer.status_code == 200
    assert answer.json == {"status": "ok", "checks": {"pubsub": "ok", "firestore": "ok"}}
    assert answer.headers["Cache-Control"] == "no-store"


@pytest.mark.parametrize("function", ["webhook-ingest", "status-api"])
def test_pubsub_down_is_a_503_naming_it(function_client, work_topic, monkeypatch, function):
    monkeypatch.setenv("PUBSUB_EMULATOR_HOST", f"127.0.0.1:{free_port()}")  # nothing listens
    answer = function_client(function).get("/healthz")
    assert answer.status_code == 503
    assert answer.json["status"] == "unavailable"
    assert answer.json["checks"]["firestore"] == "ok"
    assert answer.json["checks"]["pubsub"] != "ok"


def test_firestore_down_is_a_503_naming_it(function_client, work_topic, monkeypatch):
    monkeypatch.setenv("FIRESTORE_EMULATOR_HOST", f"127.0.0.1:{free_port()}")
    answer = function_client("status-api").get("/healthz")
    assert answer.status_code == 503
    assert answer.json["checks"] == {
        "pubsub": "ok",
        "firestore": answer.json["checks"]["firestore"],
    }
    assert answer.json["checks"]["firestore"] != "ok"
