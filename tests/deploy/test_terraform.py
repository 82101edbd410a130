"""terraform/ declares what topology.yaml says, read with python-hcl2 (see tests/deploy/hcl.py).

Each resource is expanded per `for_each` instance with its values, so these tests compare what
would be created, not how the configuration is written.
"""

from __future__ import annotations

import base64
import json
import re
import shutil
import typing
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import SecretStr

from sluice.settings import Settings, env_name
from sluice.topology import REPO_TOPOLOGY, Topology, load_topology, parse_topology
from tests.deploy.hcl import Config, HclError, Ref
from tests.topologies import mutated

ROOT = Path(__file__).resolve().parents[2]
TERRAFORM = ROOT / "terraform"
VARIABLES = {
    "project_id": "sluice-prod",
    "region": "europe-west1",
    "firestore_location": "eur3",
    "labels": {},
    "dist_dir": "../dist",
    "runtime": "python311",
    "settings": {
        "ai_provider_url": "https://api.openai.com",
        "ai_model": "gpt-4o-mini",
        "whatsapp_graph_url": "https://graph.facebook.com",
        "whatsapp_api_version": "v21.0",
    },
    "secrets": {},
    "functions": {},
    "alerts": {
        "notification_channels": [],
        "dead_letter_backlog": 0,
        "oldest_unacked_age_seconds": 900,
    },
}
PUBLIC = {"allUsers", "allAuthenticatedUsers"}


@pytest.fixture(scope="module")
def tf() -> Config:
    return Config(TERRAFORM, VARIABLES)


@pytest.fixture(scope="module")
def topology() -> Topology:
    return load_topology()


def one(instances: dict[Any, dict[str, Any]]) -> dict[str, Any]:
    (instance,) = instances.values()
    return instance


def block(resource: dict[str, Any], name: str) -> dict[str, Any]:
    (inner,) = resource[name]
    return inner


def service_of(function: str) -> Ref:
    return Ref(f'google_cloudfunctions2_function.function["{function}"].service_config[0].service')


def function_sa(function: str, attribute: str) -> Ref:
    return Ref(f'google_service_account.function["{function}"].{attribute}')


# -- Pub/Sub ---------------------------------------------------------------------------------------


def test_every_topic_dead_letter_topic_and_the_parking_lot_is_declared(tf, topology):
    topics = tf.resources("google_pubsub_topic", "topic")
    assert sorted(topics) == sorted(topology.all_topics)
    assert {name: t["name"] for name, t in topics.items()} == {t: t for t in topology.all_topics}


def test_every_subscription_is_declared_with_the_topologys_values(tf, topology):
    subs = tf.resources("google_pubsub_subscription", "push")
    assert sorted(subs) == sorted(topology.subscriptions)
    for name, spec in topology.subscriptions.items():
        sub = subs[name]
        assert sub["topic"] == f'google_pubsub_topic.topic["{spec.topic}"].id', name
        assert sub["ack_deadline_seconds"] == spec.ack_deadline_seconds, name
        assert sub["enable_message_ordering"] is spec.ordering, name
        retry = block(sub, "retry_policy")
        assert retry["minimum_backoff"] == f"{spec.retry.minimum_backoff_seconds}s", name
        assert retry["maximum_backoff"] == f"{spec.retry.maximum_backoff_seconds}s", name
        push = block(sub, "push_config")
        uri = f'google_cloudfunctions2_function.function["{spec.push_to}"].service_config[0].uri'
        # The topic in the path becomes the CloudEvent's source, as in the local cloud.
        assert push["push_endpoint"] == f"{uri}/projects/sluice-prod/topics/{spec.topic}", name
        oidc = block(push, "oidc_token")
        assert oidc == {"service_account_email": "google_service_account.pusher.email",
                        "audience": uri}  # fmt: skip
        assert block(sub, "expiration_policy") == {"ttl": ""}


def test_every_subscription_has_a_dead_letter_policy(tf, topology):
    for name, sub in tf.resources("google_pubsub_subscription", "push").items():
        policy = block(sub, "dead_letter_policy")
        target = topology.dead_letter_of(name)
        assert policy["dead_letter_topic"] == f'google_pubsub_topic.topic["{target}"].id', name
        assert policy["max_delivery_attempts"] == topology.subscriptions[name].max_delivery_attempts


def test_the_parking_lot_is_kept_by_a_pull_subscription(tf, topology):
    parked = one(tf.resources("google_pubsub_subscription", "parking_lot"))
    lot = topology.parking_lot
    assert parked["name"] == lot.subscription and "push_config" not in parked
    assert parked["topic"] == f'google_pubsub_topic.topic["{lot.topic}"].id'
    assert parked["message_retention_duration"] == f"{lot.retention_days * 86400}s"


def test_pubsubs_service_agent_may_move_dead_letters(tf, topology):
    number = "data.google_project.this.number"  # known once applied
    agent = f"serviceAccount:service-{number}@gcp-sa-pubsub.iam.gserviceaccount.com"
    publishes = tf.resources("google_pubsub_topic_iam_member", "dead_letter_publisher")
    targets = {topology.dead_letter_of(s) for s in topology.subscriptions}
    assert sorted(publishes) == sorted(targets)
    assert {(p["role"], p["member"]) for p in publishes.values()} == {
        ("roles/pubsub.publisher", agent)
    }
    acks = tf.resources("google_pubsub_subscription_iam_member", "dead_letter_subscriber")
    assert sorted(acks) == sorted(topology.subscriptions)
    assert {(a["role"], a["member"]) for a in acks.values()} == {("roles/pubsub.subscriber", agent)}


# -- functions -------------------------------------------------------------------------------------


def test_every_function_is_declared_with_the_topologys_limits(tf, topology):
    functions = tf.resources("google_cloudfunctions2_function", "function")
    assert sorted(functions) == sorted(topology.functions)
    for name, spec in topology.functions.items():
        fn = functions[name]
        build = block(fn, "build_config")
        assert build["entry_point"] == spec.entry_point
        assert block(block(build, "source"), "storage_source")["object"] == (
            f'google_storage_bucket_object.source["{name}"].name'
        )
        service = block(fn, "service_config")
        assert service["max_instance_count"] == spec.limits.max_instances, name
        assert service["max_instance_request_concurrency"] == spec.limits.concurrency, name
        # functions-framework serves as many requests at once as Cloud Run sends.
        assert service["environment_variables"]["THREADS"] == str(spec.limits.concurrency), name
        assert service["timeout_seconds"] == spec.limits.timeout_seconds, name
        assert service["available_memory"] == spec.limits.memory, name


def test_every_function_has_its_own_service_account(tf, topology):
    functions = tf.resources("google_cloudfunctions2_function", "function")
    accounts = tf.resources("google_service_account", "function")
    assert sorted(accounts) == sorted(topology.functions)
    for name, fn in functions.items():
        assert block(fn, "service_config")["service_account_email"] == function_sa(name, "email")
    ids = [a["account_id"] for a in accounts.values()]
    assert len(set(ids)) == len(ids)
    assert all(re.fullmatch(r"[a-z][a-z0-9-]{4,28}[a-z0-9]", i) for i in ids), ids


def test_no_event_function_can_be_invoked_publicly(tf, topology):
    functions = tf.resources("google_cloudfunctions2_function", "function")
    for name, spec in topology.functions.items():
        ingress = block(functions[name], "service_config")["ingress_settings"]
        assert ingress == ("ALLOW_ALL" if spec.public else "ALLOW_INTERNAL_ONLY"), name
    public = set()
    for type_ in tf.resource_types():
        if not type_.endswith(("_iam_member", "_iam_binding")):
            continue
        for b in tf.blocks_of("resource", type_):
            for binding in tf.resources(*b.labels).values():
                members = set(binding.get("members", [])) | {binding.get("member")}
                if members & PUBLIC:
                    public.add(binding.get("service") or binding.get("cloud_function"))
    assert public == {service_of(n) for n, f in topology.functions.items() if f.public}
    assert public and all(topology.functions[n].trigger == "http"
                          for n, f in topology.functions.items() if f.public)  # fmt: skip


def test_only_the_push_and_eventarc_identities_invoke_event_functions(tf, topology):
    invokers = tf.resources("google_cloud_run_service_iam_member", "invoker")
    expected = {(s.push_to, "google_service_account.pusher.member")
                for s in topology.subscriptions.values()} | {
               (t.function, "google_service_account.eventarc.member")
                for t in topology.firestore_triggers.values()}  # fmt: skip
    found = set()
    for key, binding in invokers.items():
        function = key.split("/")[0]
        assert binding["service"] == service_of(function)
        assert binding["role"] == "roles/run.invoker"
        found.add((function, binding["member"]))
    assert found == expected


def test_each_function_gets_exactly_the_settings_it_needs(tf, topology):
    functions = tf.resources("google_cloudfunctions2_function", "function")
    for name, spec in topology.functions.items():
        service = block(functions[name], "service_config")
        plain = {k for k in service["environment_variables"] if k.startswith("SLUICE_")}
        secret = {s["key"] for s in service.get("secret_environment_variables", [])}
        assert not plain & secret, name
        assert plain | secret == {env_name(n) for n in spec.needs}, name
        assert service["environment_variables"]["GOOGLE_CLOUD_PROJECT"] == "sluice-prod"


def test_secrets_are_the_settings_typed_secret_and_come_from_secret_manager(tf, topology):
    secret_fields = {
        name for name, f in Settings.model_fields.items()
        if SecretStr in typing.get_args(f.annotation) or f.annotation is SecretStr
    }  # fmt: skip
    assert set(tf.local("secret_settings")) == secret_fields
    assert sorted(tf.resources("google_secret_manager_secret", "setting")) == sorted(secret_fields)
    functions = tf.resources("google_cloudfunctions2_function", "function")
    readers = tf.resources("google_secret_manager_secret_iam_member", "reader")
    for name, spec in topology.functions.items():
        mounted = block(functions[name], "service_config").get("secret_environment_variables", [])
        needed = sorted(set(spec.needs) & secret_fields)
        assert [m["key"] for m in mounted] == [env_name(n) for n in needed], name
        assert sorted(k.split("/")[1] for k in readers if k.startswith(f"{name}/")) == needed
    for binding in readers.values():
        assert binding["role"] == "roles/secretmanager.secretAccessor"


def test_a_secret_version_is_stored_only_for_a_value_given(topology):
    given = {**VARIABLES, "secrets": {"whatsapp_app_secret": {"value": "s3cret"},
                                      "ai_provider_api_key": {"value": None}}}  # fmt: skip
    versions = Config(TERRAFORM, given).resources("google_secret_manager_secret_version", "setting")
    assert list(versions) == ["whatsapp_app_secret"]
    assert versions["whatsapp_app_secret"]["secret_data"] == "s3cret"


def test_service_accounts_publish_only_where_the_topology_says(tf, topology):
    declared = {(n, t) for n, f in topology.functions.items() for t in f.publishes}
    bindings = tf.resources("google_pubsub_topic_iam_member", "publisher")
    found: dict[str, set[tuple[str, str]]] = {}
    for binding in bindings.values():
        function = binding["member"].split('"')[1]
        topic = binding["topic"].split('"')[1]
        assert binding["member"] == function_sa(function, "member")
        found.setdefault(binding["role"], set()).add((function, topic))
    assert found == {"roles/pubsub.publisher": declared, "roles/pubsub.viewer": declared}
    # Nothing grants publishing at the project level.
    for binding in tf.resources("google_project_iam_member", "firestore").values():
        assert binding["role"] == "roles/datastore.user"


def test_only_the_functions_that_touch_sheets_act_as_the_sheets_account(tf, topology):
    users = tf.resources("google_service_account_iam_member", "sheets_user")
    assert sorted(users) == sorted(
        n for n, f in topology.functions.items() if "sheets_service_account" in f.needs
    )
    assert sorted(users) == ["backfill", "sheets-writer", "status-api"]


# -- Eventarc, Firestore, scheduler, alerts -------------------------------------------------------


def test_every_firestore_trigger_is_declared_with_its_document_pattern(tf, topology):
    triggers = tf.resources("google_eventarc_trigger", "firestore")
    assert sorted(triggers) == sorted(topology.firestore_triggers)
    for name, spec in topology.firestore_triggers.items():
        trigger = triggers[name]
        criteria = {c["attribute"]: c for c in trigger["matching_criteria"]}
        assert criteria["type"]["value"] == spec.event_type
        assert criteria["document"] == {"attribute": "document", "value": spec.document,
                                        "operator": "match-path-pattern"}  # fmt: skip
        assert criteria["database"]["value"] == "google_firestore_database.database.name"
        destination = block(block(trigger, "destination"), "cloud_run_service")
        assert destination["service"] == service_of(spec.function)
        assert trigger["event_data_content_type"] == "application/protobuf"
        assert trigger["location"] == "eur3"  # where the database is


def test_firestore_has_the_indexes_the_queries_need_and_a_ttl_on_message_records(tf):
    indexes = tf.resources("google_firestore_index", "composite")
    shapes = {
        (
            i["collection"],
            i["query_scope"],
            tuple((f["field_path"], f["order"]) for f in i["fields"]),
        )
        for i in indexes.values()
    }
    assert ("items", "COLLECTION", (("state", "ASCENDING"), ("finished_at", "ASCENDING"),
                                    ("__name__", "ASCENDING"))) in shapes  # fmt: skip
    assert ("rows", "COLLECTION_GROUP", (("written", "ASCENDING"), ("queued_at", "ASCENDING"),
                                         ("__name__", "ASCENDING"))) in shapes  # fmt: skip
    exports = one(tf.resources("google_firestore_field", "exports_backfill_state"))
    scopes = {i["query_scope"] for i in block(exports, "index_config")["indexes"]}
    assert (exports["collection"], exports["field"], scopes) == (
        "exports", "backfill_state", {"COLLECTION", "COLLECTION_GROUP"})  # fmt: skip
    ttl = one(tf.resources("google_firestore_field", "messages_ttl"))
    assert (ttl["collection"], ttl["field"]) == ("messages", "expires_at")
    assert ttl["ttl_config"] == [{}] and ttl["index_config"] == [{}]


def test_the_sweeper_is_a_scheduler_job_publishing_its_message(tf, topology):
    jobs = tf.resources("google_cloud_scheduler_job", "schedule")
    assert sorted(jobs) == sorted(topology.schedules)
    for name, spec in topology.schedules.items():
        target = block(jobs[name], "pubsub_target")
        assert target["topic_name"] == f'google_pubsub_topic.topic["{spec.topic}"].id'
        assert json.loads(base64.b64decode(target["data"])) == spec.message
        assert jobs[name]["schedule"] == f"*/{max(1, -(-spec.every_seconds // 60))} * * * *"


def test_alerts_watch_dead_letters_and_every_subscriptions_oldest_message(tf, topology):
    policies = tf.resources("google_monitoring_alert_policy", "pubsub")

    def watched(alert: str) -> tuple[str, set[str]]:
        condition = block(block(policies[alert], "conditions"), "condition_threshold")
        metric = re.search(r'metric.type = "([^"]+)"', condition["filter"])[1]  # type: ignore[index]
        return metric, set(re.findall(r'"([^"]+)"', condition["filter"].split("one_of(")[1]))

    dead_letter_consumers = {
        n for n, s in topology.subscriptions.items() if s.topic in topology.dead_letter_topics
    }
    assert watched("dead-letter-backlog") == (
        "pubsub.googleapis.com/subscription/num_undelivered_messages",
        dead_letter_consumers | {topology.parking_lot.subscription},
    )
    assert watched("oldest-unacked") == (
        "pubsub.googleapis.com/subscription/oldest_unacked_message_age",
        set(topology.subscriptions),
    )


def test_outputs_are_the_two_http_urls(tf, topology):
    outputs = {b.labels[0] for b in tf.blocks_of("output")}
    http = [n for n, f in topology.functions.items() if f.trigger == "http"]
    assert {f"{n.replace('-', '_')}_url" for n in http} <= outputs


def test_the_google_provider_is_pinned_to_one_version():
    text = (TERRAFORM / "versions.tf").read_text()
    assert re.search(
        r'source\s*=\s*"hashicorp/google"\s*\n\s*version\s*=\s*"= \d+\.\d+\.\d+"', text
    )


# -- the topology drives the cloud ----------------------------------------------------------------


def changed_copy(tmp_path: Path, change: dict[str, Any]) -> tuple[Config, Topology]:
    """terraform/ beside a changed topology.yaml, as the repository lays them out."""
    shutil.copytree(TERRAFORM, tmp_path / "terraform")
    text = mutated(change)
    (tmp_path / "topology.yaml").write_text(text)
    return Config(tmp_path / "terraform", VARIABLES), parse_topology(text)


def test_a_new_topic_and_subscription_in_the_topology_appear_in_the_terraform(tmp_path):
    raw = yaml.safe_load(REPO_TOPOLOGY.read_text())
    tf, topology = changed_copy(tmp_path, {
        "topics": {**raw["topics"], "reports": {"dead_letter": "reports-dead-letter"}},
        "subscriptions": {**raw["subscriptions"], "reports-to-processor": {
            "topic": "reports", "push_to": "batch-item-processor", "ack_deadline_seconds": 45,
            "retry": {"minimum_backoff_seconds": 3, "maximum_backoff_seconds": 30},
            "max_delivery_attempts": 9}},
    })  # fmt: skip
    assert {"reports", "reports-dead-letter"} <= set(tf.resources("google_pubsub_topic", "topic"))
    sub = tf.resources("google_pubsub_subscription", "push")["reports-to-processor"]
    assert sub["ack_deadline_seconds"] == 45
    assert block(sub, "retry_policy") == {"minimum_backoff": "3s", "maximum_backoff": "30s"}
    assert block(sub, "dead_letter_policy") == {
        "dead_letter_topic": 'google_pubsub_topic.topic["reports-dead-letter"].id',
        "max_delivery_attempts": 9,
    }
    assert "reports-dead-letter" in tf.resources("google_pubsub_topic_iam_member",
                                                 "dead_letter_publisher")  # fmt: skip
    assert "reports-to-processor" in topology.subscriptions


def test_a_changed_retry_setting_and_limit_change_what_the_terraform_declares(tmp_path):
    tf, _ = changed_copy(tmp_path, {
        "subscriptions.work-items-to-processor.retry.minimum_backoff_seconds": 7,
        "subscriptions.work-items-to-processor.max_delivery_attempts": 33,
        "functions.batch-item-processor.limits.max_instances": 3,
        "schedules.sweeper.every_seconds": 300,
    })  # fmt: skip
    sub = tf.resources("google_pubsub_subscription", "push")["work-items-to-processor"]
    assert block(sub, "retry_policy")["minimum_backoff"] == "7s"
    assert block(sub, "dead_letter_policy")["max_delivery_attempts"] == 33
    fn = tf.resources("google_cloudfunctions2_function", "function")["batch-item-processor"]
    assert block(fn, "service_config")["max_instance_count"] == 3
    assert tf.resources("google_cloud_scheduler_job", "schedule")["sweeper"]["schedule"] == (
        "*/5 * * * *"
    )


def test_an_unknown_reference_is_an_error_not_a_silent_value(tmp_path):
    shutil.copytree(TERRAFORM, tmp_path / "terraform")
    (tmp_path / "topology.yaml").write_text(REPO_TOPOLOGY.read_text())
    broken = tmp_path / "terraform" / "topology.tf"
    broken.write_text(broken.read_text().replace("local.topology.subscriptions",
                                                 "local.topology.subscriptionz"))  # fmt: skip
    with pytest.raises(HclError, match="subscriptionz"):
        Config(tmp_path / "terraform", VARIABLES).resources("google_pubsub_subscription", "push")
