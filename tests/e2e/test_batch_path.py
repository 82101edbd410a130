"""The CRM batch path on the local cloud: submit over HTTP, process through Pub/Sub, read status."""

from __future__ import annotations

import time

import httpx
import pytest
from sluice.localcloud.cloud import Deployment

from tests.conftest import bearer

pytestmark = pytest.mark.cloud


def submit(http: httpx.Client, d: Deployment, key: str, n: int, **extra: object) -> dict:
    body = {"kind": "summarize", "items": [{"input": {"text": f"doc {i}"}} for i in range(n)]}
    body.update(extra)
    r = http.post(d.url("webhook-ingest") + "/v1/batches", json=body, headers=bearer(key))
    assert r.status_code == 202, r.text
    return r.json()


def wait_done(http: httpx.Client, url: str, key: str, timeout: float = 120) -> list[dict]:
    polls = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = http.get(url, headers=bearer(key)).json()
        polls.append(status)
        if status["state"] == "completed":
            return polls
        time.sleep(0.3)
    raise AssertionError(f"batch not completed: {polls[-1]}")


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
