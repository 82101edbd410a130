"""A WhatsApp reply is sent at most once, even when the processor dies while sending it."""

from __future__ import annotations

import os
import signal

import pytest
from google.cloud.firestore_v1.base_query import FieldFilter

from sluice.adapters.tenants_store import TenantStore
from sluice.handlers.processor import IN_DOUBT
from testkit.client import bearer, wait_for, webhook
from testkit.whatsapp_payloads import change, delivery, signed, text_message

pytestmark = pytest.mark.cloud

# Short enough for a test to outwait, and consistent: the lease covers the model call, the wait
# for sending capacity and the send; the ack deadline the whole delivery.
QUICK = {
    "providers": {
        "ai": {"timeout_seconds": 3},
        "whatsapp": {"timeout_seconds": 8},
        "image-model": {"timeout_seconds": 3},
        "video-vendor": {"timeout_seconds": 3},
    },
    "work": {"lease_seconds": 20, "capacity_wait_seconds": 2},
    "subscriptions": {"whatsapp-events-to-processor": {"ack_deadline_seconds": 30}},
}


def test_a_processor_killed_after_the_graph_api_accepted_the_reply_never_sends_it_again(
    http, deploy, db
):
    d = deploy(topology_overrides=QUICK)
    TenantStore(db).create("shop")
    TenantStore(db).add_phone("shop", d.whatsapp["phone_number_id"])
    # Meta accepts the message at once and answers 4 s later: the processor dies in between.
    config = http.post(d.graph_url + "/_sluice/config", json={"answer_delay_ms": 4000})
    assert config.status_code == 200
    message = text_message("16315551181", "Is my order on its way?")
    payload = delivery(change(d.whatsapp["phone_number_id"], messages=[message]))
    body, headers = signed(payload, d.whatsapp["app_secret"])
    assert http.post(webhook(d), content=body, headers=headers).status_code == 200

    graph = d.graph_url + "/_sluice/messages"
    wait_for(lambda: http.get(graph).json(), what="the reply accepted by the Graph API")
    processor = d.functions["batch-item-processor"]
    for pid in processor.worker_pids():
        os.kill(pid, signal.SIGKILL)

    # Pub/Sub delivers the message again; once the dead worker's lease has run out, the next
    # delivery takes the item over, finds the send in doubt and fails the item saying so.
    failed = db.collection_group("items").where(filter=FieldFilter("state", "==", "failed"))
    (item,) = wait_for(lambda: [s.to_dict() for s in failed.stream()], timeout=120,
                       what="the item failed")  # fmt: skip
    assert item["error"] == f"step send: {IN_DOUBT}"
    assert item["input"]["message_id"] == message["id"]
    sent = http.get(graph).json()
    assert len(sent) == 1 and sent[0]["to"] == "16315551181"


def test_retry_failed_on_a_whatsapp_day_sends_the_reply_and_cancel_is_refused(http, deploy, db):
    d = deploy(topology_overrides=QUICK)
    shop = TenantStore(db).create("shop")
    TenantStore(db).add_phone("shop", d.whatsapp["phone_number_id"])
    # Meta refuses the token (a permanent error): the message's item fails.
    http.post(d.graph_url + "/_sluice/config", json={"access_token": "rotated"})
    message = text_message("16315551181", "Where is my parcel?")
    payload = delivery(change(d.whatsapp["phone_number_id"], messages=[message]))
    body, headers = signed(payload, d.whatsapp["app_secret"])
    assert http.post(webhook(d), content=body, headers=headers).status_code == 200
    failed = db.collection_group("items").where(filter=FieldFilter("state", "==", "failed"))
    (snap,) = wait_for(lambda: list(failed.stream()), what="the item failed")
    day = f"{d.url('status-api')}/v1/batches/{snap.reference.parent.parent.id}"

    http.post(d.graph_url + "/_sluice/config", json={"access_token": d.whatsapp["access_token"]})
    retried = http.post(day + "/retry-failed", headers=bearer(shop.api_key))
    assert retried.status_code == 200 and retried.json()["requeued"] == 1
    graph = d.graph_url + "/_sluice/messages"
    (reply,) = wait_for(lambda: http.get(graph).json(), what="the reply sent on retry")
    assert reply["to"] == "16315551181" and reply["body"]["context"]["message_id"] == message["id"]
    wait_for(lambda: snap.reference.get().get("state") == "succeeded", what="the item succeeded")

    cancel = http.post(day + "/cancel", headers=bearer(shop.api_key))
    assert cancel.status_code == 409 and cancel.json()["title"] == "Not cancellable"
    assert http.get(day, headers=bearer(shop.api_key)).json()["state"] == "open"
