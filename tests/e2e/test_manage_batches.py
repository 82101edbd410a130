"""Managing a batch on the local cloud: retry only what failed, cancel, estimated completion."""

from __future__ import annotations

import time

import pytest

from testkit.client import bearer, items_of, wait_done

pytestmark = pytest.mark.cloud


def test_permanent_errors_fail_once_and_retry_failed_requeues_exactly_those(
    http, deploy, make_tenant
):
    d = deploy(provider_args=["--permanent-failure-marker", "BROKEN"])
    key = make_tenant().api_key
    items = [{"id": f"i{n}", "input": f"doc {n}" + (" BROKEN" if n % 5 == 0 else "")}
             for n in range(20)]  # fmt: skip
    r = http.post(d.url("webhook-ingest") + "/v1/batches", json={"kind": "chat", "items": items},
                  headers=bearer(key))  # fmt: skip
    batch = r.json()
    status = wait_done(http, batch["status_url"], key)[-1]
    assert status["counts"]["failed"] == 4 and status["counts"]["succeeded"] == 16
    failed = items_of(http, batch["status_url"], key, state="failed")
    assert {i["id"] for i in failed} == {"i0", "i5", "i10", "i15"}
    assert all(i["attempts"] == 1 and "400" in i["error"] for i in failed)

    # The provider is fixed; retry exactly the failed ones.
    http.post(d.provider_url + "/_sluice/config", json={"permanent_failure_marker": None})
    calls_before = http.get(d.provider_url + "/_sluice/stats").json()["requests"]
    retried = http.post(batch["status_url"] + "/retry-failed", headers=bearer(key))
    assert retried.status_code == 200 and retried.json()["requeued"] == 4
    again = http.post(batch["status_url"] + "/retry-failed", headers=bearer(key))
    assert again.json()["requeued"] == 0

    status = wait_done(http, batch["status_url"], key)[-1]
    assert status["counts"]["succeeded"] == 20 and status["counts"]["failed"] == 0
    assert http.get(d.provider_url + "/_sluice/stats").json()["requests"] == calls_before + 4


def test_cancel_stops_queued_items_and_lets_running_ones_finish(http, deploy, make_tenant):
    d = deploy(provider_args=["--latency-ms", "300"])
    key = make_tenant().api_key
    body = {"kind": "chat", "items": [{"input": n} for n in range(60)]}
    batch = http.post(d.url("webhook-ingest") + "/v1/batches", json=body,
                      headers=bearer(key)).json()  # fmt: skip
    while True:
        status = http.get(batch["status_url"], headers=bearer(key)).json()
        if status["finished"] >= 3:
            break
        time.sleep(0.2)
    assert status["estimated_completion_at"] is not None

    r = http.post(batch["status_url"] + "/cancel", headers=bearer(key))
    assert r.status_code == 200 and r.json()["cancelled"] > 0
    deadline = time.monotonic() + 60
    while True:
        status = http.get(batch["status_url"], headers=bearer(key)).json()
        if status["counts"]["queued"] == 0 and status["counts"]["running"] == 0:
            break
        assert time.monotonic() < deadline
        time.sleep(0.3)
    counts = status["counts"]
    assert status["state"] == "cancelled" and sum(counts.values()) == 60
    assert counts["cancelled"] >= r.json()["cancelled"] > 0
    time.sleep(2)  # the cancelled items' messages are still delivered: they must do nothing
    calls = http.get(d.provider_url + "/_sluice/stats").json()["requests"]
    assert calls == counts["succeeded"] < 60
    assert http.post(batch["status_url"] + "/retry-failed", headers=bearer(key)).status_code == 409
    # Cancelling again changes nothing and says so; a completed batch is not cancelled.
    again = http.post(batch["status_url"] + "/cancel", headers=bearer(key))
    assert again.status_code == 200 and again.json() == {**r.json(), "cancelled": 0}


def test_a_completed_batch_is_not_cancelled(http, deployment, make_tenant):
    key = make_tenant().api_key
    body = {"kind": "chat", "items": [{"input": "one"}]}
    batch = http.post(deployment.url("webhook-ingest") + "/v1/batches", json=body,
                      headers=bearer(key)).json()  # fmt: skip
    wait_done(http, batch["status_url"], key)
    r = http.post(batch["status_url"] + "/cancel", headers=bearer(key))
    assert r.status_code == 409 and r.headers["content-type"] == "application/problem+json"
    assert "completed" in r.json()["detail"]
    assert http.get(batch["status_url"], headers=bearer(key)).json()["state"] == "completed"
