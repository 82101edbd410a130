"""The topology file: loaded once, typed, and references checked."""

import pytest

from sluice.topology import load_topology, parse_topology
from testkit.topologies import mutated


def test_the_repository_topology_loads():
    topology = load_topology()
    assert set(topology.functions) == {
        "webhook-ingest",
        "batch-item-processor",
        "sheets-writer",
        "backfill",
        "status-api",
    }
    for name, sub in topology.subscriptions.items():
        assert topology.functions[sub.push_to].trigger == "pubsub", name
    # Every dead-letter topic is consumed by a subscription of its own.
    consumed = {sub.topic for sub in topology.subscriptions.values()}
    assert set(topology.dead_letter_topics) <= consumed
    assert topology.dead_letter_source("work-items-dead-letter") == "work-items"
    assert topology.dead_letter_source("work-items") is None
    # Every subscription has somewhere to put what it cannot deliver.
    assert topology.dead_letter_of("work-items-to-processor") == "work-items-dead-letter"
    assert topology.dead_letter_of("sweeps-to-processor") == topology.parking_lot.topic
    assert topology.dead_letter_of("work-items-dead-letter-to-processor") == "parked"


STEP = {"provider": "ai", "call": "chat", "messages": [{"role": "user", "content": "{{ input }}"}]}


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        ("subscriptions.work-items-to-processor.topic", "nope", "unknown topic"),
        ("subscriptions.work-items-to-processor.push_to", "status-api", "not a pubsub function"),
        ("subscriptions.work-items-to-processor.max_delivery_attempts", 3, "greater than or equal"),
        ("subscriptions.work-items-to-processor.ack_deadline_seconds", 700, "less than or equal"),
        ("subscriptions.work-items-to-processor.max_delivery_attempts", None, "valid integer"),
        ("parking_lot.topic", "work-items-dead-letter", "parking lot's topic must be a topic of"),
        ("parking_lot.retention_days", 8, "less than or equal"),
        ("subscriptions.sweeps-to-processor.topic", "nope-dead-letter", "unknown topic"),
        ("schedules.sweeper.topic", "nope", "schedule sweeper: unknown topic"),
        ("schedules.sweeper.every_seconds", 0, "greater than or equal"),
        ("exports.lease_seconds", 30, "a live writer loses its lease while it waits"),
        ("exports.backfill_budget_seconds", 600, "must be below backfill's timeout"),
        ("exports.rows_per_call", 501, "less than or equal"),
        # The export's deadline: a dead writer's redelivery, then one write call's wait and call.
        (
            "exports.complete_within_seconds",
            49,
            r"exports.complete_within_seconds \(49\) must be at least exports.redelivery_seconds"
            r" \+ exports.capacity_wait_seconds \+ providers.sheets.timeout_seconds \(50\)",
        ),
        (
            "exports.redelivery_seconds",
            25,
            r"complete_within_seconds \(60\) must be at least.*\(65\)",
        ),
        ("providers.sheets.timeout_seconds", 31, r"complete_within_seconds \(60\).*\(61\)"),
        ("exports.redelivery_seconds", 0, "greater than"),
        ("functions.status-api.publishes", ["nope"], "publishes to unknown topic 'nope'"),
        ("retention.whatsapp_message_days", 7, "greater than or equal"),
        # The time budgets: each problem names the setting at fault.
        (
            "subscriptions.work-items-to-processor.retry.maximum_backoff_seconds",
            120,
            r"work.stall_seconds \(120\) must exceed subscriptions.work-items-to-processor.retry"
            r".maximum_backoff_seconds \(120\)",
        ),
        ("api.default_page_size", 501, r"api.default_page_size \(501\) must not exceed api.max"),
        (
            "work.lease_seconds",
            60,
            r"work.lease_seconds \(60\) must exceed the work after a claim, work.capacity_wait_"
            r"seconds \+ providers.image-model.timeout_seconds \+ work.bookkeeping_seconds "
            r"\(kinds.staging.steps.layout\) \(75\)",
        ),
        (
            "providers.whatsapp.timeout_seconds",
            70,
            r"work.lease_seconds \(80\) must exceed the work after a claim, work.capacity_wait_"
            r"seconds \+ providers.whatsapp.timeout_seconds \+ work.bookkeeping_seconds "
            r"\(kinds.whatsapp.steps.send\) \(85\)",
        ),
        (
            "subscriptions.work-items-to-processor.ack_deadline_seconds",
            90,
            r"subscriptions.work-items-to-processor.ack_deadline_seconds \(90\) must exceed the "
            r"whole delivery, work.capacity_wait_seconds \+ work.lease_seconds \(90\)",
        ),
        (
            "subscriptions.job-polls-to-processor.ack_deadline_seconds",
            90,
            r"subscriptions.job-polls-to-processor.ack_deadline_seconds \(90\) must exceed",
        ),
        (
            "subscriptions.whatsapp-events-to-processor.ack_deadline_seconds",
            60,
            r"subscriptions.whatsapp-events-to-processor.ack_deadline_seconds \(60\) must exceed",
        ),
        (
            "providers.callbacks.timeout_seconds",
            15,
            r"subscriptions.batch-events-to-processor.ack_deadline_seconds \(30\) must exceed the "
            r"whole delivery, .*providers.callbacks.timeout_seconds.* \(30\)",
        ),
        (
            "subscriptions.sweeps-to-processor.ack_deadline_seconds",
            60,
            r"subscriptions.sweeps-to-processor.ack_deadline_seconds \(60\) must be at least the "
            r"whole delivery, functions.batch-item-processor.limits.timeout_seconds \(120\)",
        ),
        (
            "work.bookkeeping_seconds",
            30,
            r"subscriptions.work-items-dead-letter-to-processor.ack_deadline_seconds \(30\) must "
            r"exceed the whole delivery, work.bookkeeping_seconds \(30\)",
        ),
        (
            "providers.callbacks.tenant_max_concurrent",
            10,
            r"providers.callbacks.tenant_max_concurrent \(10\) must be below its max_concurrent",
        ),
        (
            "providers.ai.number_max_share",
            1.0,
            r"providers.ai.number_max_share\s+Input should be less than 1",
        ),
        (
            "firestore_triggers.row-queued-to-sheets-writer.function",
            "webhook-ingest",
            "not a firestore function",
        ),
        # A secret is said once, and is a setting some function needs.
        ("secrets", ["whatsapp_app_secret", "whatsapp_app_secret"], "listed twice"),
        ("secrets", ["ai_model"], "'ai_model' is no function's need"),
        ("secrets", "whatsapp_app_secret", "valid list"),
        # What a function reads when set is no secret (a secret is a need) and no need again.
        (
            "functions.batch-item-processor.uses",
            ["whatsapp_app_secret"],
            "batch-item-processor.uses: 'whatsapp_app_secret' is a secret, so a need",
        ),
        ("functions.batch-item-processor.uses", ["ai_provider_url"], "is a need already"),
        # Exactly one kind is the default, and a kind's name is one a batch can give.
        ("kinds.chat.default", False, r"kinds: exactly one must be the default, not none"),
        (
            "kinds.other",
            {"description": "x", "default": True, "steps": {"s": STEP}},
            r"exactly one must be the default, not \['chat', 'other'\]",
        ),
        ("kinds.has space", {"description": "x", "steps": {"s": STEP}}, "should match pattern"),
        (
            "kinds.chat.steps.answer.messages",
            [{"role": "user", "content": "{{ input"}],
            "user message's template does not compile",
        ),
        # A step calls a declared provider with an endpoint, and says what it sends.
        ("kinds.chat.steps.answer.provider", "sheets", "provider 'sheets' is not declared with an"),
        ("kinds.chat.steps.answer.provider", "nope", "provider 'nope' is not declared"),
        ("kinds.chat.steps.answer.call", "http", "`call: http` needs `request`"),
        ("kinds.staging.steps.video.job.status_path", "/v1/tasks", "should match pattern"),
        # A provider's endpoint settings are the processor's needs, its key a secret.
        ("providers.ai.endpoint.url", "ai_url", "'ai_url' must be a need of the batch-item-proc"),
        (
            "secrets",
            ["whatsapp_access_token", "whatsapp_app_secret", "whatsapp_verify_token"],
            "its api_key 'ai_provider_api_key' must be a secret",
        ),
        # A provider of remote jobs takes only those, and its polls leave room for starts.
        ("kinds.staging.steps.layout.provider", "video-vendor", "every step calling it must be"),
        (
            "providers.video-vendor.requests_per_minute",
            120,
            r"requests_per_minute \(120\) must exceed its polls, .* \(120\)",
        ),
        # Every WhatsApp message's reply is the whatsapp kind's, ending in its send, never twice.
        ("kinds.whatsapp.steps.send.repeatable", True, "is not repeatable"),
        ("kinds.whatsapp.steps.send.provider", "ai", "calls provider whatsapp"),
        ("kinds.whatsapp.steps.compose.after", [], r"must end in one step"),
        ("kinds.whatsapp.default", True, "exactly one must be the default"),
        ("kinds.whatsapp.steps", {"only": STEP}, r"its last step \(only\) must be a whatsapp_rep"),
        (
            "kinds.chat.steps.answer",
            {"provider": "whatsapp", "call": "whatsapp_reply", "repeatable": False, "text": "hi"},
            "only the whatsapp kind replies on WhatsApp",
        ),
        ("kinds.whatsapp.steps.send.text", "{{ steps.compose", "text's template does not compile"),
        # A kind's steps need only steps of its own, in no cycle, and end in one step.
        ("kinds.chat.steps.second", STEP, r"must end in one step, .* not \['answer', 'second'\]"),
        ("kinds.chat.steps.answer.after", ["nope"], "comes after 'nope', which is not one of its"),
        ("kinds.chat.steps.answer.after", ["answer"], "in a cycle"),
        ("kinds", {}, "at least 1 item"),
    ],
)
def test_a_broken_topology_fails_loudly(path, value, message):
    with pytest.raises(ValueError, match=message):
        parse_topology(mutated({path: value}))


def test_the_secrets_are_settings_the_functions_need():
    topology = load_topology()
    needed = {n for f in topology.functions.values() for n in f.needs}
    assert topology.secrets and set(topology.secrets) <= needed
