"""The CRM batch path on the local cloud: submit over HTTP, process through Pub/Sub, read status."""

from __future__ import annotations

import json
import os
import signal
import time

import pytest
from google.cloud import pubsub_v1  # type: ignore[attr-defined]

from testkit.client import bearer, items_of, logs_of, submit, wait_done

pytestmark = pytest.mark.cloud


def test_a_batch_finishes_with_one_result_per_item(http, deployment, make_tenant):
    tenant = make_tenant()
    accepted = submit(http, deployment, tenant.api_key, 300)
    assert accepted["total"] == 300 and accepted["state"] == "open"

    polls = wait_done(http, accepted["status_url"], tenant.api_key)

    previous_finished = 0
    for status in polls:
        assert sum(status["counts"].values()) == 300
        assert status["finished"] >= previous_finished
        previous_finished = status["finished"]
    assert polls[-1]["counts"]["succeeded"] == 300
    stats = http.get(deployment.provider_url + "/_sluice/stats").json()
    assert stats["by_status"].get("200") == 300


def test_items_are_listed_page_by_page_and_by_state(http, deployment, make_tenant):
    tenant = make_tenant()
    accepted = submit(http, deployment, tenant.api_key, 90)
    wait_done(http, accepted["status_url"], tenant.api_key)

    everything = items_of(http, accepted["status_url"], tenant.api_key)
    assert len(everything) == 90 and len({i["id"] for i in everything}) == 90
    assert all(i["result"]["content"].startswith("echo: ") for i in everything)
    assert items_of(http, accepted["status_url"], tenant.api_key, state="failed") == []
    assert len(items_of(http, accepted["status_url"], tenant.api_key, state="succeeded")) == 90


def test_redelivered_messages_produce_no_second_call_or_result(http, deployment, make_tenant, db):
    tenant = make_tenant()
    accepted = submit(http, deployment, tenant.api_key, 30)
    wait_done(http, accepted["status_url"], tenant.api_key)
    job = db.collection("jobs").document(accepted["batch_id"])
    before = {s.id: s.to_dict() for s in job.collection("items").stream()}

    publisher = pubsub_v1.PublisherClient()
    topic = publisher.topic_path(deployment.project, "work-items")
    for _ in range(2):
        for item_id in before:
            data = json.dumps({"job_id": accepted["batch_id"], "item_id": item_id}).encode()
            publisher.publish(topic, data).result(timeout=10)

    # Every extra delivery is acknowledged as a duplicate: 60 of them, seen in the processor's log.
    deadline = time.monotonic() + 60
    while logs_of(deployment, "batch-item-processor").count("duplicate delivery") < 60:
        assert time.monotonic() < deadline, "the extra deliveries were not all processed"
        time.sleep(0.2)
    after = {s.id: s.to_dict() for s in job.collection("items").stream()}
    assert after == before
    stats = http.get(deployment.provider_url + "/_sluice/stats").json()
    assert stats["requests"] == 30
    status = http.get(accepted["status_url"], headers=bearer(tenant.api_key)).json()
    assert status["counts"]["succeeded"] == 30 and sum(status["counts"].values()) == 30


def test_a_killed_processor_loses_no_item(http, deploy, make_tenant):
    # Short leases and backoff so that the items the dead process held are taken over quickly;
    # the lease still outlasts the work after a claim, as the topology check requires.
    d = deploy(
        topology_overrides={
            "work": {"lease_seconds": 5, "capacity_wait_seconds": 1, "bookkeeping_seconds": 0.5},
            "providers": {
                "ai": {"timeout_seconds": 2},
                "whatsapp": {"timeout_seconds": 1},
                "image-model": {"timeout_seconds": 2},
                "video-vendor": {"timeout_seconds": 2},
            },
            "subscriptions": {
                "work-items-to-processor": {
                    "retry": {"minimum_backoff_seconds": 1, "maximum_backoff_seconds": 3}
                }
            },
        },
        provider_args=["--latency-ms", "100"],
    )
    tenant = make_tenant()
    accepted = submit(http, d, tenant.api_key, 200)
    processor = d.functions["batch-item-processor"]
    killed = 0
    deadline = time.monotonic() + 30
    while killed < 2 and time.monotonic() < deadline:
        status = http.get(accepted["status_url"], headers=bearer(tenant.api_key)).json()
        if status["counts"]["running"] > 0 and status["finished"] > 20 * (killed + 1):
            # First one instance (a gunicorn worker), then the whole process.
            pid = processor.worker_pids()[0] if killed == 0 else processor.pid
            os.kill(pid, signal.SIGKILL)
            killed += 1
        time.sleep(0.2)
    assert killed == 2

    polls = wait_done(http, accepted["status_url"], tenant.api_key, timeout=180)
    assert polls[-1]["counts"]["succeeded"] == 200
    assert processor.restarts >= 1
    items = items_of(http, accepted["status_url"], tenant.api_key)
    assert {i["state"] for i in items} == {"succeeded"} and len(items) == 200


def test_a_batch_without_an_export_never_invokes_the_sheets_functions(
    http, deployment, make_tenant
):
    tenant = make_tenant()
    accepted = submit(http, deployment, tenant.api_key, 20)
    wait_done(http, accepted["status_url"], tenant.api_key)
    router, project = deployment.cloud.router, deployment.project
    time.sleep(2)  # events are posted by the emulator moments after their commit
    # Eventarc matches paths, not fields: no trigger's path is written for a job without an
    # export, not even by the commits that assert it has none.
    for trigger in deployment.topology.firestore_triggers:
        assert router.count(project, trigger, "received") == 0, trigger
