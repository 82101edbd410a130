"""A 1,000-item pipeline over two providers, its processor SIGKILLed three times on the way: every
item finishes, and a step is called again only when a kill took its answer with it."""

from __future__ import annotations

import os
import signal
import time
from collections import defaultdict

import pytest

from testkit.client import bearer, items_of, submit, wait_done

pytestmark = pytest.mark.cloud

ITEMS = 1000


def chat(content: str, after: list[str]) -> dict:
    return {"provider": "ai", "call": "chat", "after": after,
            "messages": [{"role": "user", "content": content}]}  # fmt: skip


# Three steps on two providers: a and c on the ai provider, b an image generation on the image
# model; each call's text names its step and item, so each provider's log counts them apart.
THREE = {
    "description": "three steps on two providers",
    "steps": {
        "a": chat("a {{ input }}", []),
        "b": {"provider": "image-model", "call": "http", "after": ["a"],
              "request": {"path": "/v1/images/generations",
                          "body": {"model": "m", "prompt": "b {{ input }}"}}},
        "c": chat("c {{ input }} {{ steps.b.data[0].url[-8:] }}", ["b"]),
    },
}  # fmt: skip

FAST = {"requests_per_minute": 60000, "max_concurrent": 20, "timeout_seconds": 2}


def test_processors_killed_mid_pipeline_repeat_no_step_whose_output_was_recorded(
    http, deploy, make_tenant
):
    d = deploy(
        topology_overrides={
            "kinds": {"three": THREE},
            "providers": {"ai": FAST, "image-model": FAST, "whatsapp": {"timeout_seconds": 1},
                          "video-vendor": {"timeout_seconds": 2}},
            # A dead worker's items are taken over within seconds.
            "work": {"lease_seconds": 5, "capacity_wait_seconds": 1, "bookkeeping_seconds": 0.5},
            "subscriptions": {"work-items-to-processor": {
                "retry": {"minimum_backoff_seconds": 1, "maximum_backoff_seconds": 3}}},
        },
        provider_args=["--latency-ms", "40"],
        provider_server_args={"image-model": ["--latency-ms", "40"]},
    )  # fmt: skip
    tenant = make_tenant()
    inputs = [f"m{n:04d}" for n in range(ITEMS)]
    accepted = submit(http, d, tenant.api_key, kind="three", inputs=inputs)
    processor = d.functions["batch-item-processor"]
    kills: list[float] = []
    deadline = time.monotonic() + 240
    while len(kills) < 3 and time.monotonic() < deadline:
        status = http.get(accepted["status_url"], headers=bearer(tenant.api_key)).json()
        succeeded_a = status["steps"]["a"]["succeeded"]
        if status["counts"]["running"] > 0 and succeeded_a > ITEMS * (len(kills) + 1) // 4:
            # An instance (a gunicorn worker), another, then the whole process.
            pid = processor.worker_pids()[0] if len(kills) < 2 else processor.pid
            kills.append(time.time())
            os.kill(pid, signal.SIGKILL)
        time.sleep(0.1)
    assert len(kills) == 3

    polls = wait_done(http, accepted["status_url"], tenant.api_key, timeout=600)
    assert polls[-1]["counts"]["succeeded"] == ITEMS
    assert {name: c["succeeded"] for name, c in polls[-1]["steps"].items()} == dict.fromkeys(
        "abc", ITEMS
    )

    # Every successful call at each provider, by step and item.
    calls: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for provider in ("ai", "image-model"):
        log = http.get(d.provider_server_url(provider) + "/_sluice/requests",
                       params={"limit": 10_000}).json()  # fmt: skip
        for call in log:
            if call["status"] == 200:
                step, item = call["content"].split()[:2]
                calls[(step, item)].append(call)
    assert set(calls) == {(step, m) for step in "abc" for m in inputs}
    # A step called twice for an item is one whose first answer a kill took with it: that call
    # was in flight, or had just answered, when a process died (a killed master's workers live
    # on for a moment, until they see it gone). No other step was repeated.
    for (step, item), made in calls.items():
        for first in sorted(made, key=lambda c: c["at"])[:-1]:
            assert any(k - 1.0 <= first["ended"] and first["at"] <= k + 3.0 for k in kills), (
                step,
                item,
                [(c["at"], c["ended"]) for c in made],
                kills,
            )
    repeated = sum(len(made) - 1 for made in calls.values())
    assert repeated < 3 * d.topology.providers["ai"].max_concurrent * 2
    # The items show each step once succeeded, the result the last step's output.
    for item in items_of(http, accepted["status_url"], tenant.api_key)[:50]:
        assert [s["state"] for s in item["steps"].values()] == ["succeeded"] * 3
        assert item["result"] == item["steps"]["c"]["output"]
