"""A function gets only the settings its `needs` lists, as in the cloud: one that uses a setting
its `needs` leaves out fails on the local cloud, not first in the cloud."""

from __future__ import annotations

import time

import pytest

from testkit.client import bearer, logs_of

pytestmark = pytest.mark.cloud

# webhook-ingest as declared, but without status_api_url (it answers each batch's status_url).
WITHOUT_STATUS_URL = {
    "functions": {"webhook-ingest": {"needs": ["whatsapp_app_secret", "whatsapp_verify_token"]}}
}


def test_a_setting_left_out_of_needs_fails_the_request_that_uses_it(http, deploy, db, make_tenant):
    d = deploy(topology_overrides=WITHOUT_STATUS_URL)
    key = make_tenant().api_key
    ingest = d.url("webhook-ingest")

    r = http.post(ingest + "/v1/batches", json={"kind": "chat", "items": [{"input": "a"}]},
                  headers=bearer(key))  # fmt: skip
    assert r.status_code == 500
    assert list(db.collection("jobs").limit(1).stream()) == []  # nothing was accepted
    deadline = time.monotonic() + 10
    while "SLUICE_STATUS_API_URL is not set" not in logs_of(d, "webhook-ingest"):
        assert time.monotonic() < deadline, logs_of(d, "webhook-ingest")
        time.sleep(0.2)

    # What it still lists it is still given: the WhatsApp handshake answers.
    token = d.whatsapp["verify_token"]
    handshake = http.get(ingest + "/whatsapp/webhook", params={
        "hub.mode": "subscribe", "hub.challenge": "42", "hub.verify_token": token})  # fmt: skip
    assert handshake.status_code == 200 and handshake.text == "42"
