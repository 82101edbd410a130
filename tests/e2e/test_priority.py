"""Priority and fairness under saturation, on the local cloud: a WhatsApp reply goes ahead of bulk
work, and a second tenant's small batch is not stuck behind a first tenant's big one.

Both are measured in provider calls, from the provider server's own log, not in seconds."""

from __future__ import annotations

import time

import pytest

from sluice.adapters.tenants_store import TenantStore
from testkit.client import bearer, submit, wait_done, wait_for, webhook
from testkit.whatsapp_payloads import change, delivery, signed, text_message

pytestmark = pytest.mark.cloud

QUESTION = "Is my order on its way?"


def test_a_whatsapp_reply_and_a_small_batch_overtake_a_saturating_bulk_batch(
    http, deploy, make_tenant, db
):
    d = deploy(
        topology_overrides={"providers": {"ai": {"requests_per_minute": 600, "max_concurrent": 3}}},
        provider_args=["--latency-ms", "300"],
    )
    bulk, small = make_tenant("bulk"), make_tenant("small")
    TenantStore(db).create("shop")
    TenantStore(db).add_phone("shop", d.whatsapp["phone_number_id"])

    big = submit(http, d, bulk.api_key, inputs=[f"bulk {n}" for n in range(200)])
    # Wait until the bulk batch holds the provider.
    wait_for(lambda: http.get(d.provider_url + "/_sluice/stats").json()["requests"] >= 30,
             what="the bulk batch to saturate the provider")  # fmt: skip

    message = text_message("16315551181", QUESTION)
    body, headers = signed(delivery(change(d.whatsapp["phone_number_id"], messages=[message])),
                           d.whatsapp["app_secret"])  # fmt: skip
    posted_at = time.time()
    assert http.post(webhook(d), content=body, headers=headers).status_code == 200
    few = submit(http, d, small.api_key, inputs=[f"small {n}" for n in range(20)])

    wait_done(http, few["status_url"], small.api_key, timeout=120)
    big_status = http.get(big["status_url"], headers=bearer(bulk.api_key)).json()
    wait_for(lambda: http.get(d.graph_url + "/_sluice/messages").json(), what="the reply")
    calls = http.get(d.provider_url + "/_sluice/requests", params={"limit": 1000}).json()

    # The reply's first model call (its intent and draft go at once) came after only a few of the
    # bulk calls that arrived after it was posted.
    order = [c["content"] for c in calls if c["at"] >= posted_at]
    ahead = next(n for n, content in enumerate(order) if QUESTION in content)
    assert ahead <= 8, order[: ahead + 1]
    # The small batch finished while most of the big one was still waiting.
    assert big_status["finished"] <= 120, big_status
    assert sum(1 for c in calls if c["content"].startswith("small")) == 20
