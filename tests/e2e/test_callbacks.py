"""Completion callbacks on the local cloud: signed, once per completion, retried until they land,
on one delivery chain's backoff however many sweeps pass, without delaying other tenants."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler

import pytest

from localcloud.processes import BackgroundServer
from sluice.domain.callbacks import verify
from testkit.client import bearer, submit, wait_done

pytestmark = pytest.mark.cloud


class CRM(BackgroundServer):
    """A CRM's callback endpoint that fails its first `failures` calls, recording every call."""

    def __init__(self, failures: int) -> None:
        self.calls: list[tuple[int, dict[str, str], bytes]] = []
        self.times: list[float] = []  # when each call arrived (time.monotonic)
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
                    crm.times.append(time.monotonic())
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


def wait_for(what, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not what():
        assert time.monotonic() < deadline
        time.sleep(0.1)


def test_a_dead_endpoint_gets_attempts_on_the_backoff_only_and_one_post_when_it_is_back(
    http, deploy, make_tenant
):
    sweep_every, backoff = 1, {"minimum_backoff_seconds": 2, "maximum_backoff_seconds": 4}
    d = deploy(topology_overrides={
        "schedules": {"sweeper": {"every_seconds": sweep_every}},
        # A stall time far below the callbacks' quiet time, so every sweep would republish a
        # pending callback if it went by stall (it must exceed the work items' backoff).
        "work": {"stall_seconds": 2},
        "subscriptions": {
            "work-items-to-processor": {
                "retry": {"minimum_backoff_seconds": 1, "maximum_backoff_seconds": 1}},
            "batch-events-to-processor": {"retry": backoff},
        },
    })  # fmt: skip
    dead, alive = CRM(failures=10**9), CRM(failures=0)
    dead.start()
    alive.start()
    try:
        down = make_tenant("down", callback_url=dead.url + "/hooks")
        up = make_tenant("up", callback_url=alive.url + "/hooks")
        failing = submit(http, d, down.api_key, 3)
        wait_done(http, failing["status_url"], down.api_key)
        wait_for(lambda: dead.calls)

        # Meanwhile the other tenant's callback arrives at once, on its first attempt.
        other = submit(http, d, up.api_key, 3)
        wait_done(http, other["status_url"], up.api_key)
        wait_for(lambda: alive.calls)
        assert [status for status, _, _ in alive.calls] == [204]
        assert all(status == 500 for status, _, _ in dead.calls)

        # Ten sweeps while the endpoint is down, then it comes back.
        wait_for(lambda: time.monotonic() - dead.times[0] > 10 * sweep_every + 1)
        dead.failures = len(dead.calls)
        wait_for(lambda: any(status == 204 for status, _, _ in dead.calls))
        time.sleep(backoff["maximum_backoff_seconds"] + 2)  # another POST, if any, comes now
    finally:
        dead.stop()
        alive.stop()

    statuses = [status for status, _, _ in dead.calls]
    assert statuses.count(204) == 1 and statuses[-1] == 204, statuses
    assert alive.times[0] < dead.times[-1]  # it arrived while the first endpoint still failed
    # One chain of attempts, each after the subscription's minimum backoff at least (the
    # emulator measures it from the nack; allow for its clock granularity).
    gaps = [b - a for a, b in zip(dead.times, dead.times[1:], strict=False)]
    assert all(gap >= backoff["minimum_backoff_seconds"] - 0.25 for gap in gaps), gaps
    assert len({headers["webhook-id"] for _, headers, _ in dead.calls}) == 1
    assert len(alive.calls) == 1
