"""Retrying a submission with the same Idempotency-Key, as real CRMs do, while it is still being
accepted and while the processor already works on its items (on the local cloud)."""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from localcloud.cloud import Deployment
from testkit.client import bearer

pytestmark = pytest.mark.cloud


def body_of(n: int, tag: str) -> bytes:
    items = [{"input": f"{tag} doc {i}"} for i in range(n)]
    return json.dumps({"kind": "chat", "items": items}).encode()


def submit_until_accepted(
    d: Deployment, key: str, body: bytes, idempotency_key: str, *, clients: int, timeout: float
) -> list[list[int]]:
    """`clients` CRMs post the same body with the same key at the same moment. Each one's HTTP
    client gives up after `timeout` seconds and posts again at once, and honours Retry-After on
    a 409, until it gets its 202. Returns each client's answers in order (599: it gave up)."""
    start = threading.Barrier(clients)
    headers = {**bearer(key), "Idempotency-Key": idempotency_key,
               "Content-Type": "application/json"}  # fmt: skip
    url = d.url("webhook-ingest") + "/v1/batches"

    def crm(_: int) -> list[int]:
        answers: list[int] = []
        with httpx.Client(timeout=timeout) as http:
            start.wait()
            while len(answers) < 100:
                try:
                    r = http.post(url, content=body, headers=headers)
                except httpx.TimeoutException:
                    answers.append(599)
                    continue
                answers.append(r.status_code)
                if r.status_code == 202:
                    return answers
                assert r.status_code == 409, r.text
                assert r.json()["title"] == "Request in flight"
                time.sleep(int(r.headers["Retry-After"]))
        raise AssertionError(f"never accepted: {answers}")

    with ThreadPoolExecutor(clients) as pool:
        return list(pool.map(crm, range(clients)))


def stored_items(db, job_id: str) -> list[dict]:
    items = db.collection("jobs").document(job_id).collection("items")
    return [snap.to_dict() for snap in items.select(["state", "result", "finished_at"]).stream()]


def status_of(http: httpx.Client, d: Deployment, key: str, job_id: str) -> dict:
    url = f"{d.url('status-api')}/v1/batches/{job_id}"
    return http.get(url, headers=bearer(key)).json()


# 10,000 items: the suite's heaviest on CPU. Both run on one worker, one after the other.
@pytest.mark.xdist_group("cpu-heavy")
@pytest.mark.parametrize("clients", [2, 3])
def test_concurrent_retries_of_a_large_batch_never_overwrite_or_miscount(
    http, deployment, make_tenant, db, clients
):
    """10,000 items take seconds to accept: the CRMs' clients give up after 5 s and retry, and
    the processor finishes items meanwhile. Once accepted, every count is what the items say."""
    tenant = make_tenant()
    body = body_of(10_000, f"c{clients}")
    answers = submit_until_accepted(
        deployment, tenant.api_key, body, "crm-export-1", clients=clients, timeout=5
    )
    assert all(a[-1] == 202 for a in answers)
    assert any(409 in a for a in answers), answers  # they did overlap

    # The same body once more, as a CRM would after losing the answer. (Its 10,000 items are
    # validated again behind the abandoned requests still running: the wait allows for that on a
    # loaded machine; speed is `make bench`'s to measure.)
    job_id = http.post(deployment.url("webhook-ingest") + "/v1/batches", content=body,
                       headers={**bearer(tenant.api_key), "Idempotency-Key": "crm-export-1",
                                "Content-Type": "application/json"},
                       timeout=180).json()["batch_id"]  # fmt: skip
    # The processor is at work on the batch before it is settled (on a loaded machine its first
    # results may come only after the last retry's answer).
    deadline = time.monotonic() + 60
    status = status_of(http, deployment, tenant.api_key, job_id)
    while status["counts"]["succeeded"] == 0 and time.monotonic() < deadline:
        time.sleep(0.5)
        status = status_of(http, deployment, tenant.api_key, job_id)
    assert status["state"] == "open"
    assert status["counts"]["succeeded"] > 0
    # Settle the batch: the items not started yet are cancelled, the running ones finish.
    cancel = f"{deployment.url('status-api')}/v1/batches/{job_id}/cancel"
    # (Cancelling 10,000 items is 50 transactions: seconds, more on a loaded machine.)
    assert http.post(cancel, headers=bearer(tenant.api_key), timeout=180).status_code == 200
    deadline = time.monotonic() + 60
    while status["counts"]["running"] > 0 or status["counts"]["queued"] > 0:
        assert time.monotonic() < deadline, status
        time.sleep(0.5)
        status = status_of(http, deployment, tenant.api_key, job_id)

    items = stored_items(db, job_id)
    assert len(items) == 10_000
    by_state = Counter(item["state"] for item in items)
    assert all(n >= 0 for n in status["counts"].values()), status
    assert sum(status["counts"].values()) == status["total"] == 10_000
    assert {s: n for s, n in status["counts"].items() if n} == dict(by_state)
    succeeded = [item for item in items if item["state"] == "succeeded"]
    assert all(item["result"] and item["finished_at"] for item in succeeded)
    # Every item that ran reached the provider once: no second call for any of them.
    stats = http.get(deployment.provider_url + "/_sluice/stats").json()
    assert stats["requests"] == by_state["succeeded"]


def test_concurrent_retries_run_each_item_once_and_complete_once(http, deployment, make_tenant, db):
    tenant = make_tenant()
    body = body_of(300, "small")
    answers = submit_until_accepted(
        deployment, tenant.api_key, body, "crm-export-2", clients=3, timeout=30
    )
    assert all(a[-1] == 202 for a in answers)
    (job,) = list(db.collection("jobs").stream())
    status_url = f"{deployment.url('status-api')}/v1/batches/{job.id}"
    deadline = time.monotonic() + 180
    while (status := http.get(status_url, headers=bearer(tenant.api_key)).json())["state"] != (
        "completed"
    ):
        assert time.monotonic() < deadline, status
        time.sleep(0.5)

    assert status["counts"]["succeeded"] == 300 and status["total"] == 300
    calls = http.get(deployment.provider_url + "/_sluice/requests", params={"limit": 1000}).json()
    per_input = Counter(call["content"] for call in calls)
    assert len(per_input) == 300 and set(per_input.values()) == {1}
    stored = job.reference.get().to_dict()
    assert stored["completions"] == 1
    last_item = max(item["finished_at"] for item in stored_items(db, job.id))
    assert stored["completed_at"] >= last_item
