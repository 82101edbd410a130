"""Kinds on the local cloud: what a batch's kind declares is what its items send."""

from __future__ import annotations

import pytest

from testkit.client import bearer, items_of, submit, wait_done

pytestmark = pytest.mark.cloud


def chat_kind(*messages: tuple[str, str]) -> dict:
    step = {
        "provider": "ai",
        "call": "chat",
        "messages": [{"role": role, "content": content} for role, content in messages],
    }
    return {"description": "a test kind", "steps": {"only": step}}  # fmt: skip


def test_each_item_sends_what_its_kind_s_templates_render(http, deploy, make_tenant):
    d = deploy(topology_overrides={"kinds": {
        "staging-brief": chat_kind(
            ("system", "You brief home stagers."),
            ("user", "Stage {{ input.room }} in {{ params.style }} style."),
        ),
        "reckless": chat_kind(("user", "{{ input.__class__.__mro__ }}")),
    }})  # fmt: skip
    key = make_tenant().api_key

    briefed = submit(http, d, key, kind="staging-brief", params={"style": "Scandinavian"},
                     inputs=[{"room": "the kitchen"}, {"room": "the loft"}])  # fmt: skip
    reckless = submit(http, d, key, kind="reckless", inputs=["anything"])
    wait_done(http, briefed["status_url"], key)
    wait_done(http, reckless["status_url"], key)

    # The provider saw each item's rendered message, and nothing of the refused one.
    calls = http.get(d.provider_url + "/_sluice/requests", params={"limit": 100}).json()
    assert sorted(c["content"] for c in calls) == [
        "Stage the kitchen in Scandinavian style.", "Stage the loft in Scandinavian style."
    ]  # fmt: skip
    results = {i["input"]["room"]: i["result"]["content"]
               for i in items_of(http, briefed["status_url"], key)}  # fmt: skip
    assert results == {"the kitchen": "echo: Stage the kitchen in Scandinavian style.",
                       "the loft": "echo: Stage the loft in Scandinavian style."}  # fmt: skip
    # A template the sandbox refuses fails its item for good, saying why, after one attempt.
    [refused] = items_of(http, reckless["status_url"], key)
    assert refused["state"] == "failed" and refused["attempts"] == 1
    assert "'__class__'" in refused["error"] and "unsafe" in refused["error"]


COMPOSE = "compose {{ steps.intent.content }} + {{ steps.draft.content }}"


def reply_kind() -> dict:
    def chat(content: str, after: tuple[str, ...] = ()) -> dict:
        return {"provider": "ai", "call": "chat", "after": list(after),
                "messages": [{"role": "user", "content": content}]}  # fmt: skip

    return {"description": "intent and draft at once, then compose from both", "steps": {
        "intent": chat("intent of {{ input }}"),
        "draft": chat("draft for {{ input }}"),
        "compose": chat(COMPOSE, after=("intent", "draft")),
    }}  # fmt: skip


def test_a_pipeline_runs_its_steps_in_order_and_never_repeats_one_that_succeeded(
    http, deploy, make_tenant
):
    reply = reply_kind()
    # A third of the calls fail (500) and are tried again; attempts enough that none runs out.
    provider = ["--failure-rate", "0.3", "--seed", "7", "--latency-ms", "400"]
    d = deploy(topology_overrides={"kinds": {"reply": reply}, "work": {"max_attempts": 30}},
               provider_args=provider)  # fmt: skip
    key = make_tenant().api_key
    inputs = [f"m{n}" for n in range(20)]

    accepted = submit(http, d, key, kind="reply", inputs=inputs)
    polls = wait_done(http, accepted["status_url"], key, timeout=180)

    assert polls[-1]["counts"]["succeeded"] == 20
    results = {
        i["input"]: i["result"]["content"] for i in items_of(http, accepted["status_url"], key)
    }
    assert results == {
        m: f"echo: compose echo: intent of {m} + echo: draft for {m}" for m in inputs
    }
    calls = http.get(d.provider_url + "/_sluice/requests", params={"limit": 1000}).json()
    succeeded = sorted(c["content"] for c in calls if c["status"] == 200)
    # Exactly one successful call per item and step, whatever failed and was tried again.
    assert succeeded == sorted(
        text for m in inputs for text in (f"intent of {m}", f"draft for {m}", results[m][6:])
    )
    assert any(c["status"] == 500 for c in calls)
    # Intent and draft ran at the same time: for some item their calls overlapped.
    by_content = {c["content"]: c for c in calls if c["status"] == 200}
    assert any(
        by_content[f"intent of {m}"]["at"] < by_content[f"draft for {m}"]["ended"]
        and by_content[f"draft for {m}"]["at"] < by_content[f"intent of {m}"]["ended"]
        for m in inputs
    )


def test_retry_failed_resumes_a_pipeline_at_its_failed_step(http, deploy, make_tenant):
    d = deploy(topology_overrides={"kinds": {"reply": reply_kind()}},
               provider_args=["--permanent-failure-marker", "compose"])  # fmt: skip
    key = make_tenant().api_key
    inputs = [f"m{n}" for n in range(5)]
    accepted = submit(http, d, key, kind="reply", inputs=inputs)
    assert wait_done(http, accepted["status_url"], key)[-1]["counts"]["failed"] == 5
    # Each failed item says which step failed and why, and shows the steps that succeeded.
    for item in items_of(http, accepted["status_url"], key):
        assert item["error"].startswith("step compose: provider answered 400")
        assert item["failed_step"] == "compose"
        steps = item["steps"]
        assert {name: step["state"] for name, step in steps.items()} == {
            "intent": "succeeded", "draft": "succeeded", "compose": "failed"
        }  # fmt: skip
        assert steps["intent"]["output"]["content"] == f"echo: intent of {item['input']}"
        assert steps["compose"]["attempts"] == 1 and steps["compose"]["output"] is None, steps
        assert steps["intent"]["started_at"] <= steps["intent"]["finished_at"]
    # The status counts the items at each step: two steps succeeded, the third failed for all.
    status = http.get(accepted["status_url"], headers=bearer(key)).json()
    assert {name: (c["succeeded"], c["failed"]) for name, c in status["steps"].items()} == {
        "intent": (5, 0), "draft": (5, 0), "compose": (0, 5)
    }  # fmt: skip

    # The provider takes the compose step again; retry-failed runs that step alone.
    http.post(d.provider_url + "/_sluice/config", json={"permanent_failure_marker": None})
    retried = http.post(accepted["status_url"] + "/retry-failed", headers=bearer(key))
    assert retried.status_code == 200 and retried.json()["requeued"] == 5
    assert wait_done(http, accepted["status_url"], key)[-1]["counts"]["succeeded"] == 5

    calls = http.get(d.provider_url + "/_sluice/requests", params={"limit": 1000}).json()
    succeeded = sorted(c["content"] for c in calls if c["status"] == 200)
    assert succeeded == sorted(
        text for m in inputs for text in (f"intent of {m}", f"draft for {m}",
                                          f"compose echo: intent of {m} + echo: draft for {m}")
    )  # fmt: skip
