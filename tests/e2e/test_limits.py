"""Provider limits on the local cloud: held across processor instances, waits cost nothing."""

from __future__ import annotations

import json
import time

import pytest

from testkit.client import items_of, submit, wait_done

pytestmark = pytest.mark.cloud


def test_the_declared_rate_and_concurrency_hold_across_instances(http, deploy, make_tenant):
    d = deploy(
        topology_overrides={
            "providers": {"ai": {"requests_per_minute": 30, "max_concurrent": 1}},
            "functions": {"batch-item-processor": {"local_instances": 3}},
            "work": {"capacity_wait_seconds": 5},
        },
        provider_args=["--latency-ms", "100"],
    )
    tenant = make_tenant()
    accepted = submit(http, d, tenant.api_key, 30)
    polls = wait_done(http, accepted["status_url"], tenant.api_key, timeout=240)

    assert polls[-1]["counts"]["succeeded"] == 30
    stats = http.get(d.provider_url + "/_sluice/stats").json()
    assert stats["requests"] == 30
    assert stats["max_in_flight"] <= 1
    assert stats["max_per_minute"] <= 30
    # Bulk work keeps a fifth of the budget for interactive work, so these 30 needed a second
    # minute: they waited for it, and not one attempt was spent waiting.
    items = items_of(http, accepted["status_url"], tenant.api_key)
    assert {i["attempts"] for i in items} == {1}
    assert "deferred" in (d.dir / "batch-item-processor.log").read_text()


def test_under_5xx_timeouts_and_429_bursts_every_item_settles_once(http, deploy, make_tenant):
    d = deploy(
        topology_overrides={
            # Declared 4 at once, but the provider takes 2: the rest get 429 bursts.
            "providers": {"ai": {"max_concurrent": 4, "timeout_seconds": 2}},
            "subscriptions": {"work-items-to-processor": {"retry": {"maximum_backoff_seconds": 4}}},
        },
        provider_args=["--latency-ms", "100", "--failure-rate", "0.1", "--timeout-rate", "0.05",
                       "--timeout-sleep-s", "4", "--max-concurrent", "2", "--seed", "7"],
    )  # fmt: skip
    tenant = make_tenant()
    accepted = submit(http, d, tenant.api_key, 60)
    polls = wait_done(http, accepted["status_url"], tenant.api_key, timeout=240)

    stats = http.get(d.provider_url + "/_sluice/stats").json()
    assert stats["by_status"]["500"] > 0 and stats["by_status"]["429"] > 0  # the faults happened
    counts = polls[-1]["counts"]
    assert counts["succeeded"] + counts["failed"] == 60  # none lost
    items = items_of(http, accepted["status_url"], tenant.api_key)
    assert len({i["id"] for i in items}) == 60
    for item in items:
        if item["state"] == "succeeded":
            # Its own answer, once: an item has one result, from the call that held its lease.
            echoed = item["result"]["content"].removeprefix("echo: ")
            assert json.loads(echoed) == item["input"]
        else:
            assert item["state"] == "failed" and item["error"]
        # Waiting for capacity (or a 429) never cost an attempt or sent an item to dead letters.
        assert item["attempts"] <= 5
        assert "dead-lettered" not in (item["error"] or "")


def test_a_provider_accepting_half_the_declared_rate_slows_every_instance(
    http, deploy, make_tenant
):
    d = deploy(
        topology_overrides={
            "providers": {"ai": {"requests_per_minute": 24, "max_concurrent": 4}},
            "functions": {"batch-item-processor": {"local_instances": 2}},
        },
        provider_args=["--latency-ms", "50", "--rate-limit-per-minute", "12"],
    )
    tenant = make_tenant()
    accepted = submit(http, d, tenant.api_key, 16)
    polls = wait_done(http, accepted["status_url"], tenant.api_key, timeout=240)

    assert polls[-1]["counts"]["succeeded"] == 16  # no item failed because of it
    items = items_of(http, accepted["status_url"], tenant.api_key)
    assert {i["attempts"] for i in items} == {1}  # and no attempt was spent on a 429
    calls = http.get(d.provider_url + "/_sluice/requests", params={"limit": 1000}).json()
    refused = [c["at"] for c in calls if c["status"] == 429]
    # The provider refused only the calls already on their way when it first said 429 (at most
    # one per concurrent slot, all within a few seconds); after that every instance held back
    # until it accepted again, instead of spending the rest of the minute on 429s.
    assert 0 < len(refused) <= 4, calls
    assert max(refused) - min(refused) <= 5, calls
    assert len(calls) - len(refused) == 16


def test_a_provider_trickling_its_answer_is_cut_off_at_the_total_deadline(
    http, deploy, make_tenant
):
    # Each piece of the answer comes 200 ms after the last, so no read waits a second; the whole
    # answer takes about 5 s, past the provider's declared 1 s.
    d = deploy(
        topology_overrides={
            "providers": {"ai": {"timeout_seconds": 1}},
            "work": {"max_attempts": 2},
        },
        provider_args=["--trickle-ms", "200"],
    )
    tenant = make_tenant()
    accepted = submit(http, d, tenant.api_key, 2)
    polls = wait_done(http, accepted["status_url"], tenant.api_key, timeout=120)

    assert polls[-1]["counts"]["failed"] == 2
    for item in items_of(http, accepted["status_url"], tenant.api_key):
        assert item["state"] == "failed" and item["result"] is None
        assert "provider did not answer within its 1 s deadline" in item["error"]
        assert item["attempts"] == 2
    # The provider saw each call's connection closed before it had sent the whole answer.
    # (The server notices a hang-up at its next write, up to one trickle step after the client
    # went: wait until it has seen every call end.)
    deadline = time.monotonic() + 15
    while True:
        calls = http.get(d.provider_url + "/_sluice/requests", params={"limit": 100}).json()
        if all(c["ended"] is not None for c in calls) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert len(calls) == 4
    assert all(c["client_closed"] for c in calls), calls
