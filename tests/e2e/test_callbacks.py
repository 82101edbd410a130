"""Completion callbacks on the local cloud: signed, once per completion, retried until they land."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler

import pytest

from sluice.domain.callbacks import verify
from sluice.localcloud.processes import BackgroundServer
from tests.conftest import bearer
from tests.e2e.test_batch_path import submit, wait_done

pytestmark = pytest.mark.cloud


class CRM(BackgroundServer):
    """A CRM's callback endpoint that fails its first `failures` calls, recording every call."""

    def __init__(self, failures: int) -> None:
        self.calls: list[tuple[int, dict[str, str], bytes]] = []
        self.failures = failures
        lock = threading.Lock()
        crm = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                with lock:
                    status = 500 if len(crm.calls) < crm.failures else 204
                    crm.calls.append((status, {k.lower(): v for k, v in self.headers.items()},
                                      body))  # fmt: skip
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        super().__init__(Handler)


@pytest.fixture
def crm():
    server = CRM(failures=2)
    server.start()
    yield server
    server.stop()


def test_the_callback_arrives_once_signed_even_if_the_crm_fails_at_first(
    http, deploy, make_tenant, crm
):
    d = deploy(topology_overrides={"subscriptions": {"batch-events-to-processor": {
        "retry": {"minimum_backoff_seconds": 1, "maximum_backoff_seconds": 2}}}})  # fmt: skip
    tenant = make_tenant(callback_url=crm.url + "/tenant-default")
    batch = submit(http, d, tenant.api_key, 5, callback_url=crm.url + "/sluice")
    wait_done(http, batch["status_url"], tenant.api_key)

    deadline = time.monotonic() + 60
    while not any(status == 204 for status, _, _ in crm.calls):
        assert time.monotonic() < deadline, crm.calls
        time.sleep(0.2)
    time.sleep(3)  # a second delivery, if any, would arrive now
    assert [status for status, _, _ in crm.calls] == [500, 500, 204]
    ids = {headers["webhook-id"] for _, headers, _ in crm.calls}
    assert len(ids) == 1  # one event, retried: the receiver can drop repeats by this id
    for _, headers, body in crm.calls:
        assert verify(tenant.signing_secret, headers, body)
        assert not verify(tenant.signing_secret, headers, body.replace(b"5", b"6"))
    event = json.loads(crm.calls[-1][2])
    assert event["type"] == "batch.completed"
    assert event["data"]["batch_id"] == batch["batch_id"]
    assert event["data"]["counts"]["succeeded"] == 5
    status = http.get(batch["status_url"], headers=bearer(tenant.api_key)).json()
    assert status["state"] == "completed"


def test_a_callback_url_into_a_private_network_is_refused_at_send_time_not_retried(
    http, deploy, db, make_tenant
):
    # Stored before URLs were checked (or written around the CLI): the check at send time,
    # after resolving the host, refuses it and settles the callback as failed, once.
    d = deploy(topology_overrides={"subscriptions": {"batch-events-to-processor": {
        "retry": {"minimum_backoff_seconds": 1, "maximum_backoff_seconds": 2}}}})  # fmt: skip
    tenant = make_tenant()
    db.collection("tenants").document(tenant.id).update({"callback_url": "https://10.9.9.9/cb"})
    batch = submit(http, d, tenant.api_key, 3)
    wait_done(http, batch["status_url"], tenant.api_key)
    job = db.collection("jobs").document(batch["batch_id"])
    deadline = time.monotonic() + 60
    while (job.get().to_dict() or {}).get("callback", {}).get("state") == "pending":
        assert time.monotonic() < deadline, job.get().to_dict()
        time.sleep(0.3)
    callback = job.get().to_dict()["callback"]
    assert callback["state"] == "failed"
    assert "10.9.9.9 is not a public address" in callback["error"]
