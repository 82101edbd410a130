"""Kinds on the local cloud: what a batch's kind declares is what its items send."""

from __future__ import annotations

import pytest

from testkit.client import items_of, submit, wait_done

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
