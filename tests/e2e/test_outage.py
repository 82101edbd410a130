"""A long provider outage on the local cloud: waiting fails nothing and multiplies nothing."""

from __future__ import annotations

import json
import time
from collections import Counter, defaultdict

import pytest
from google.cloud import pubsub_v1  # type: ignore[attr-defined]

from localcloud.cloud import Deployment
from sluice.adapters.tenants_store import TenantStore
from testkit.client import items_of, submit, wait_done, wait_for, webhook
from testkit.whatsapp_payloads import change, delivery, signed, text_message

pytestmark = pytest.mark.cloud

WORK = "work-items-to-processor"


def live_messages(d: Deployment, settle: float) -> Counter[str]:
    """How many messages the broker holds for each item right now, counted by Pub/Sub itself:
    push is paused (the work subscription's and the sweeps', so that no sweep adds any
    meanwhile), the deliveries under way are let finish, everything the work subscription holds
    is pulled, then handed back (not acknowledged) and pushing resumes."""
    subscriber = pubsub_v1.SubscriberClient()
    work = subscriber.subscription_path(d.project, WORK)
    held: dict[str, str] = {}
    ack_ids: list[str] = []
    try:
        with d.push_paused():
            time.sleep(settle)  # a delivery under way ends (deferred, re-published) within this
            # Pulled messages stay out of the way until their ack deadline: each is counted once.
            while pulled := subscriber.pull(subscription=work, max_messages=500, timeout=5):
                if not pulled.received_messages:
                    break
                for m in pulled.received_messages:
                    held[m.message.message_id] = m.message.data.decode()
                    ack_ids.append(m.ack_id)
            if ack_ids:  # handed back, to be pushed again once push resumes
                subscriber.modify_ack_deadline(subscription=work, ack_ids=ack_ids,
                                               ack_deadline_seconds=0)  # fmt: skip
        return Counter(json.loads(data)["item_id"] for data in held.values())
    finally:
        subscriber.close()


def test_a_long_429_outage_never_multiplies_an_items_messages(http, deploy, make_tenant):
    stall = 6
    d = deploy(
        topology_overrides={
            # Scaled down: a sweep every 2 s, a batch stalled after 6 s without progress, a
            # delivery deferred after 1 s without capacity. The outage below outlasts seven
            # stall periods, as 15 minutes of 429s would with the declared 120 s.
            "work": {"stall_seconds": stall, "capacity_wait_seconds": 1, "recovery_seconds": 5},
            "subscriptions": {
                WORK: {"retry": {"minimum_backoff_seconds": 1, "maximum_backoff_seconds": 2}}
            },
            "schedules": {"sweeper": {"every_seconds": 2}},
        },
        # Every call refused with 429 and Retry-After: 60 (the limit is 0 a minute).
        provider_args=["--rate-limit-per-minute", "0"],
    )
    subscriber = pubsub_v1.SubscriberClient()
    tap = subscriber.subscription_path(d.project, "tap")
    subscriber.create_subscription(name=tap, topic=f"projects/{d.project}/topics/work-items")
    tenant = make_tenant()
    accepted = submit(http, d, tenant.api_key, 3)

    time.sleep(7 * stall + 3)
    live = live_messages(d, settle=3)

    # What was published meanwhile, on the wire: the sweeper did send every item new messages,
    # sweep after sweep, since nothing moved (no item was touched while it waited).
    sent: defaultdict[str, set[int]] = defaultdict(set)
    read_from = time.time()  # deferred messages keep coming: read what was sent until now
    caught_up = False
    while not caught_up:
        tapped = subscriber.pull(subscription=tap, max_messages=1000, timeout=5)
        caught_up = not tapped.received_messages
        for m in tapped.received_messages:
            message = json.loads(m.message.data)
            sent[message["item_id"]].add(message.get("dispatch", 0))
            caught_up |= m.message.publish_time.timestamp() > read_from
        if tapped.received_messages:
            subscriber.acknowledge(
                subscription=tap, ack_ids=[m.ack_id for m in tapped.received_messages]
            )
    assert len(sent) == 3 and all(len(sends) >= 4 for sends in sent.values()), sent
    # Yet the broker holds at most two messages per item: the newest, and an older one that
    # ends at its next delivery.
    assert sum(live.values()) >= 1 and max(live.values()) <= 2, live

    # The provider accepts again: every item finishes once, no attempt spent on the wait.
    http.post(d.provider_url + "/_sluice/config", json={"rate_limit_per_minute": None})
    polls = wait_done(http, accepted["status_url"], tenant.api_key, timeout=180)
    assert polls[-1]["counts"]["succeeded"] == 3
    assert {i["attempts"] for i in items_of(http, accepted["status_url"], tenant.api_key)} == {1}
    calls = http.get(d.provider_url + "/_sluice/requests", params={"limit": 1000}).json()
    answered = Counter(c["content"] for c in calls if c["status"] == 200)
    assert len(answered) == 3 and set(answered.values()) == {1}, answered
    subscriber.close()


def test_whatsapp_messages_waiting_out_a_long_429_outage_are_answered_once_in_order(
    http, deploy, db
):
    d = deploy(
        topology_overrides={
            # Refusing a delivery to wait would dead-letter it after 5 refusals, about 10 s
            # here (as 18 minutes would with the declared 20 attempts and 60 s backoff).
            "subscriptions": {
                "whatsapp-events-to-processor": {
                    "max_delivery_attempts": 5,
                    "retry": {"minimum_backoff_seconds": 1, "maximum_backoff_seconds": 2},
                }
            },
            "work": {"capacity_wait_seconds": 1, "recovery_seconds": 5},
            "schedules": {"sweeper": {"every_seconds": 2}},
        },
        provider_args=["--rate-limit-per-minute", "0"],
    )
    TenantStore(db).create("shop")
    TenantStore(db).add_phone("shop", d.whatsapp["phone_number_id"])
    phone, secret = d.whatsapp["phone_number_id"], d.whatsapp["app_secret"]
    messages = [
        text_message("16315551181", "first question"),
        text_message("16315551181", "second question"),
        text_message("16315550000", "another customer"),
    ]
    for message in messages:  # one webhook each, in the order the users wrote
        body, headers = signed(delivery(change(phone, messages=[message])), secret)
        assert http.post(webhook(d), content=body, headers=headers).status_code == 200

    # Three times as long as the refusals would have taken to dead-letter them.
    time.sleep(30)
    items = db.collection_group("items")
    states = Counter(s.to_dict()["state"] for s in items.stream())
    # Waiting, none failed (some may be claimed at this moment, waiting for a model slot: a
    # reply's steps each take their permit once it is claimed).
    assert set(states) <= {"queued", "running"}, states
    graph = d.graph_url + "/_sluice/messages"
    assert http.get(graph).json() == []

    http.post(d.provider_url + "/_sluice/config", json={"rate_limit_per_minute": None})
    sent = wait_for(lambda: (s := http.get(graph).json()) and len(s) >= 3 and s, timeout=180,
                    what="the three replies")  # fmt: skip
    time.sleep(3)  # nothing more comes
    sent = http.get(graph).json()
    replies = [(m["to"], m["body"]["text"]["body"]) for m in sent]
    assert sorted(replies) == sorted(
        [(m["from"], f"echo: {m['text']['body']}") for m in messages]
    ), replies
    # One user's replies in the order the questions came.
    first = [text for to, text in replies if to == "16315551181"]
    assert first == ["echo: first question", "echo: second question"]
    assert Counter(s.to_dict()["state"] for s in items.stream()) == {"succeeded": 3}


def test_a_flood_on_one_business_number_holds_no_more_ai_slots_than_its_cap(
    http, deploy, db, make_tenant
):
    d = deploy(
        # A quarter of 4 slots: one.
        topology_overrides={"providers": {"ai": {"max_concurrent": 4, "number_max_share": 0.25}}},
        provider_args=["--latency-ms", "700"],
    )
    TenantStore(db).create("shop")
    TenantStore(db).add_phone("shop", d.whatsapp["phone_number_id"])
    phone, secret = d.whatsapp["phone_number_id"], d.whatsapp["app_secret"]
    tenant = make_tenant()
    accepted = submit(http, d, tenant.api_key, 12)
    # Twelve customers write to the number at once: their conversations are pushed in
    # parallel, so without the cap several replies would be computed at once.
    flood = [text_message(f"1631555{n:04d}", f"flood {n}") for n in range(12)]
    body, headers = signed(delivery(change(phone, messages=flood)), secret)
    assert http.post(webhook(d), content=body, headers=headers).status_code == 200

    wait_done(http, accepted["status_url"], tenant.api_key, timeout=180)
    wait_for(lambda: len(http.get(d.graph_url + "/_sluice/messages").json()) == 12, timeout=180,
             what="the twelve replies")  # fmt: skip
    calls = http.get(d.provider_url + "/_sluice/requests", params={"limit": 1000}).json()
    replies = [c for c in calls if "flood" in c["content"] and c["status"] == 200]
    assert len(replies) == 3 * 12  # each reply's three model calls: intent, draft, compose
    # At the provider: never two of the number's model calls in flight at once.
    events = sorted([(c["at"], 1) for c in replies] + [(c["ended"], -1) for c in replies])
    in_flight = peak = 0
    for _, step in events:
        in_flight += step
        peak = max(peak, in_flight)
    assert peak == 1
