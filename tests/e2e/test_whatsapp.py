"""WhatsApp Cloud API webhooks on the local cloud: handshake, signatures, events, replies."""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from google.cloud import pubsub_v1  # type: ignore[attr-defined]
from google.cloud.firestore_v1.base_query import FieldFilter

from localcloud.cloud import Deployment, LocalCloud
from sluice.adapters.conversations_store import ConversationStore
from sluice.adapters.tenants_store import TenantExists, TenantStore
from sluice.domain.whatsapp import sign
from sluice.messages import WhatsAppEventMessage
from testkit.client import logs_of, wait_for, webhook
from testkit.whatsapp_payloads import change, delivery, signed, status, text_message

# One deployment serves the whole module, on one worker (deploying one per test was most of its
# time). Each test has a business phone number of its own, so its day's job, conversations and
# replies are its own; what it reads of the logs is what was written since it began.
pytestmark = [pytest.mark.cloud, pytest.mark.xdist_group("whatsapp")]


@pytest.fixture(scope="module")
def deployment(local_cloud: LocalCloud) -> Iterator[Deployment]:
    shared = local_cloud.deploy(f"test-{uuid.uuid4().hex[:10]}")
    yield shared
    shared.stop(wait=False)


@pytest.fixture
def project(deployment: Deployment) -> str:
    return deployment.project


@pytest.fixture
def new_logs(deployment: Deployment) -> Callable[[str], str]:
    """A function's log as written since this test began."""
    start = {name: len(logs_of(deployment, name)) for name in deployment.functions}
    return lambda name: logs_of(deployment, name)[start[name] :]


def replies(http, deployment: Deployment, phone: str) -> list[dict]:
    """The messages sent from this business number, as the Graph API server received them."""
    graph = deployment.graph_url + "/_sluice/messages"
    sent: list[dict] = http.get(graph, params={"phone_number_id": phone}).json()
    return sent


@pytest.fixture
def events_tap(deployment: Deployment):
    """A pull subscription on whatsapp-events: a copy of every event published from now on."""
    subscriber = pubsub_v1.SubscriberClient()
    name = subscriber.subscription_path(deployment.project, f"tap-{uuid.uuid4().hex[:8]}")
    subscriber.create_subscription(name=name, topic=f"projects/{deployment.project}/topics/"
                                   "whatsapp-events")  # fmt: skip

    def pull(expected: int, wait: float = 10) -> list:
        got: list = []
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline and len(got) < expected:
            response = subscriber.pull(subscription=name, max_messages=100, timeout=5)
            got += response.received_messages
            if response.received_messages:
                ack_ids = [m.ack_id for m in response.received_messages]
                subscriber.acknowledge(subscription=name, ack_ids=ack_ids)
        return got

    return pull


@pytest.fixture
def phone(db) -> str:
    """A business phone number of this test's own, routed to the tenant "shop"."""
    store = TenantStore(db)
    with contextlib.suppress(TenantExists):  # made by an earlier test of the module
        store.create("shop")
    number = f"1{uuid.uuid4().int % 10**14:014d}"
    store.add_phone("shop", number)
    return number


def test_the_verification_handshake_answers_metas_request(http, deployment):
    token = deployment.whatsapp["verify_token"]
    params = {"hub.mode": "subscribe", "hub.challenge": "1158201444", "hub.verify_token": token}
    r = http.get(webhook(deployment), params=params)
    assert (r.status_code, r.text) == (200, "1158201444")
    assert r.headers["content-type"].startswith("text/plain")
    for bad in ({**params, "hub.verify_token": "wrong"}, {**params, "hub.mode": "unsubscribe"},
                {"hub.challenge": "1"}):  # fmt: skip
        assert http.get(webhook(deployment), params=bad).status_code == 403


def test_only_a_valid_signature_is_accepted(http, deployment, events_tap):
    secret = deployment.whatsapp["app_secret"]
    payload = delivery(change("123", messages=[text_message("16315551181", "hi")]))
    body, headers = signed(payload, secret)
    tampered = body.replace(b"hi", b"ho")
    cases = [
        (tampered, headers),
        (body, {"X-Hub-Signature-256": sign(body, "another-secret")}),
        (body, {}),
        (body, {"X-Hub-Signature-256": "sha1=" + "0" * 40}),
        (body, {"X-Hub-Signature-256": "sha256=zz"}),
    ]
    for content, hdrs in cases:
        r = http.post(webhook(deployment), content=content, headers=hdrs)
        assert r.status_code == 401, hdrs
    assert events_tap(expected=1, wait=3) == []

    assert http.post(webhook(deployment), content=body, headers=headers).status_code == 200
    assert len(events_tap(expected=1)) == 1


def test_one_delivery_yields_one_event_per_message_status_and_error(http, deployment, events_tap):
    payload = {
        "object": "whatsapp_business_account",
        "entry": [
            {"id": "1", "changes": [
                change("123", messages=[text_message("111", "a"), text_message("222", "b")]),
                change("123", statuses=[status("wamid.x1", "delivered", "111")]),
            ]},
            {"id": "2", "changes": [
                change("456", messages=[text_message("333", "c")],
                       statuses=[status("wamid.x2", "read", "333"),
                                 status("wamid.x3", "failed", "333")],
                       errors=[{"code": 131000, "title": "Something went wrong"}]),
            ]},
        ],
    }  # fmt: skip
    body, headers = signed(payload, deployment.whatsapp["app_secret"])
    r = http.post(webhook(deployment), content=body, headers=headers)
    assert r.status_code == 200 and r.json() == {"received": 7}
    events = events_tap(expected=7)
    assert len(events) == 7
    keys = sorted(e.message.ordering_key for e in events)
    assert keys == ["123:111", "123:111", "123:222", "456", "456:333", "456:333", "456:333"]


def test_the_same_delivery_three_times_sends_exactly_one_reply(http, deployment, phone, new_logs):
    message = text_message("16315551181", "What are your opening hours?")
    body, headers = signed(delivery(change(phone, messages=[message])),
                           deployment.whatsapp["app_secret"])  # fmt: skip
    for _ in range(3):
        assert http.post(webhook(deployment), content=body, headers=headers).status_code == 200

    wait_for(lambda: replies(http, deployment, phone), what="a reply")
    # All three deliveries are processed: the two repeats find the item finished (or leased).
    wait_for(lambda: new_logs("batch-item-processor").count("duplicate delivery") >= 2,
             what="the repeated deliveries")  # fmt: skip
    sent = replies(http, deployment, phone)
    assert len(sent) == 1
    reply = sent[0]
    assert reply["to"] == "16315551181"
    assert reply["body"]["text"]["body"] == "echo: What are your opening hours?"
    assert reply["body"]["context"] == {"message_id": message["id"]}


def test_a_reply_is_the_whatsapp_kind_s_pipeline_intent_and_draft_at_once_then_compose_and_send(
    http, deployment, phone
):
    question = f"Can I return shoes? {uuid.uuid4().hex[:6]}"
    provider = deployment.provider_url
    http.post(provider + "/_sluice/config", json={"latency_ms": 300})
    try:
        body, headers = signed(delivery(change(phone, messages=[text_message("1555", question)])),
                               deployment.whatsapp["app_secret"])  # fmt: skip
        assert http.post(webhook(deployment), content=body, headers=headers).status_code == 200
        [reply] = wait_for(lambda: replies(http, deployment, phone), what="the reply")
    finally:
        http.post(provider + "/_sluice/config", json={"latency_ms": 0})
    calls = http.get(provider + "/_sluice/requests", params={"limit": 1000}).json()
    ok = [c for c in calls if question in c["content"] and c["status"] == 200]
    [intent] = [c for c in ok if c["content"] == f"What does the customer want? {question}"]
    # The draft and the compose both send the customer's words as the user's: compose is later.
    draft, compose = sorted((c for c in ok if c["content"] == question), key=lambda c: c["at"])
    assert len(ok) == 3  # one call per model step
    # Intent and draft ran at the same time; the answer was composed once both had ended.
    assert intent["at"] < draft["ended"] and draft["at"] < intent["ended"]
    assert compose["at"] >= max(intent["ended"], draft["ended"])
    # What was sent is the composed answer (the local model echoes the question), after it.
    assert reply["body"]["text"]["body"] == f"echo: {question}"
    assert reply["at"] >= compose["ended"]


def test_a_reaction_a_status_and_our_own_message_get_no_reply(http, deployment, phone, db):
    reaction = {**text_message("16315551181", ""), "type": "reaction",
                "reaction": {"message_id": "wamid.x", "emoji": "👍"}}  # fmt: skip
    reaction.pop("text")
    own = text_message(deployment.whatsapp["display_phone_number"], "sent by us")
    payload = delivery(change(phone, messages=[reaction, own],
                              statuses=[status("wamid.y", "sent", "16315551181")]))  # fmt: skip
    body, headers = signed(payload, deployment.whatsapp["app_secret"])
    assert http.post(webhook(deployment), content=body, headers=headers).json()["received"] == 3
    items = db.collection("jobs").document(f"wa-shop-{phone}-20251121").collection("items")
    succeeded = items.where(filter=FieldFilter("state", "==", "succeeded"))

    def both_done() -> list[dict] | None:
        done = [snap.to_dict() for snap in succeeded.stream()]
        return done if len(done) == 2 else None

    finished = wait_for(both_done, what="both messages processed")
    assert sorted(i["result"]["note"] for i in finished) == [
        "no reply to a reaction message", "no reply to a text message"]  # fmt: skip
    ref = ConversationStore(db).message_ref(phone, "16315551181", "wamid.y")
    wait_for(lambda: (ref.get().to_dict() or {}).get("status") == "sent", what="the status")
    assert replies(http, deployment, phone) == []


def test_statuses_out_of_order_leave_the_message_read(http, deployment, phone, db, new_logs):
    wamid, user = "wamid.HBgLMTY1MDM4Nzk0MzkVAgARGBI5QTNDQTVCM0Q0Q0Q2RTY3RTcA", "16315551181"
    secret = deployment.whatsapp["app_secret"]
    for state in ("read", "delivered", "sent"):
        body, headers = signed(delivery(change(phone, statuses=[status(wamid, state, user)])),
                               secret)  # fmt: skip
        assert http.post(webhook(deployment), content=body, headers=headers).status_code == 200
    wait_for(lambda: "status sent" in new_logs("batch-item-processor"),
             what="the last status")  # fmt: skip
    doc = ConversationStore(db).message_ref(phone, user, wamid).get().to_dict()
    assert doc["status"] == "read"
    # The TTL policy's field: the record goes once Meta can no longer repeat the status.
    keep = timedelta(days=deployment.topology.retention.whatsapp_message_days)
    assert abs(doc["expires_at"] - (datetime.now(UTC) + keep)) < timedelta(minutes=5)


def test_a_failed_status_keeps_its_error(http, deployment, phone, db):
    wamid, user = "wamid.failing", "16315551181"
    body, headers = signed(delivery(change(phone, statuses=[status(wamid, "failed", user)])),
                           deployment.whatsapp["app_secret"])  # fmt: skip
    assert http.post(webhook(deployment), content=body, headers=headers).status_code == 200
    ref = ConversationStore(db).message_ref(phone, user, wamid)
    doc = wait_for(lambda: (ref.get().to_dict() or {}).get("status") and ref.get().to_dict(),
                   what="the status")  # fmt: skip
    assert doc["status"] == "failed" and doc["errors"][0]["code"] == 131047


def test_a_body_over_metas_limit_is_a_413(http, deployment):
    limit = deployment.topology.api.max_whatsapp_body_bytes
    body, headers = signed(b"x" * (limit + 1), deployment.whatsapp["app_secret"])
    assert http.post(webhook(deployment), content=body, headers=headers).status_code == 413


def test_inbound_messages_form_a_daily_job_with_status(http, deployment, phone, db):
    messages = [text_message(f"1631555{n:04d}", f"question {n}") for n in range(3)]
    body, headers = signed(delivery(change(phone, messages=messages)),
                           deployment.whatsapp["app_secret"])  # fmt: skip
    assert http.post(webhook(deployment), content=body, headers=headers).status_code == 200
    job_id = f"wa-shop-{phone}-20251121"
    job = db.collection("jobs").document(job_id)
    items = wait_for(lambda: [s.to_dict() for s in job.collection("items").stream()
                              if s.get("state") == "succeeded"] if job.get().exists else None,
                     what="the day's job")  # fmt: skip
    succeeded = job.collection("items").where(filter=FieldFilter("state", "==", "succeeded"))
    wait_for(lambda: len(list(succeeded.stream())) == 3, what="three replies")
    assert job.get().get("kind") == "whatsapp" and job.get().get("state") == "open"
    assert items[0]["result"]["reply"].startswith("echo: question")


def test_after_a_number_moves_its_messages_land_in_the_new_tenants_job(http, deployment, phone, db):
    secret = deployment.whatsapp["app_secret"]
    jobs = db.collection("jobs")

    def replied(job_id: str) -> list[dict] | None:
        items = [s.to_dict() for s in jobs.document(job_id).collection("items").stream()]
        return items if items and all(i["state"] == "succeeded" for i in items) else None

    body, headers = signed(delivery(change(phone, messages=[text_message("16315550001", "one")])),
                           secret)  # fmt: skip
    assert http.post(webhook(deployment), content=body, headers=headers).status_code == 200
    wait_for(lambda: replied(f"wa-shop-{phone}-20251121"), what="shop's reply")

    store = TenantStore(db)
    with contextlib.suppress(TenantExists):  # made by an earlier run of this test's module
        store.create("other shop")
    assert store.add_phone("other shop", phone, move=True) == "shop"
    body, headers = signed(delivery(change(phone, messages=[text_message("16315550002", "two")])),
                           secret)  # fmt: skip
    assert http.post(webhook(deployment), content=body, headers=headers).status_code == 200
    moved = wait_for(lambda: replied(f"wa-other-shop-{phone}-20251121"), what="the new job")

    # Same number, same day: each tenant's job holds its own customers' messages only.
    assert [i["input"]["text"] for i in moved] == ["two"]
    assert jobs.document(f"wa-other-shop-{phone}-20251121").get().get("tenant") == "other-shop"
    kept = [i["input"]["text"] for i in replied(f"wa-shop-{phone}-20251121") or []]
    assert kept == ["one"]
    assert len(replies(http, deployment, phone)) == 2


def test_secrets_stay_off_command_lines_and_message_text_out_of_the_logs(
    http, deployment, phone, db
):
    secrets = [deployment.ai_api_key, *(deployment.whatsapp[k] for k in
               ("app_secret", "verify_token", "access_token"))]  # fmt: skip
    pids = [p.pid for p in deployment._servers.values()]
    for fn in deployment.functions.values():
        pids += [fn.pid, *fn.worker_pids()]
    for pid in pids:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode()
        assert not [s for s in secrets if s in cmdline], cmdline

    # A message that gets its reply, and one Pub/Sub gave up on (dead-lettered).
    words = {"replied": "my card number is 4111 1111", "dead": "my pin is 4321"}
    message = text_message("16315551181", words["replied"])
    body, headers = signed(delivery(change(phone, messages=[message])),
                           deployment.whatsapp["app_secret"])  # fmt: skip
    assert http.post(webhook(deployment), content=body, headers=headers).status_code == 200
    wait_for(lambda: replies(http, deployment, phone), what="a reply")
    # A short message id keeps the text within what a log line of the message would show.
    lost_message = text_message("16315551182", words["dead"], "wamid.lost")
    lost = WhatsAppEventMessage(kind="message", phone_number_id=phone, body=lost_message)
    publisher = pubsub_v1.PublisherClient()
    topic = publisher.topic_path(deployment.project, "whatsapp-events-dead-letter")
    publisher.publish(topic, lost.model_dump_json().encode()).result(timeout=30)
    job = db.collection("jobs").document(f"wa-shop-{phone}-20251121").collection("items")
    wait_for(lambda: [s for s in job.stream() if s.get("state") == "failed"],
             what="the dead-lettered message recorded")  # fmt: skip

    for name in deployment.functions:
        log = logs_of(deployment, name)
        for text in words.values():
            assert text not in log, (name, text)
