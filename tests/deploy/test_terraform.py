"""terraform/ declares what topology.yaml says, read with python-hcl2 (see testkit/hcl.py).

Each resource is expanded per `for_each` instance with its values, so these tests compare what
would be created, not how the configuration is written.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from google.auth.credentials import AnonymousCredentials
from google.cloud import firestore
from google.cloud.firestore_v1.types import StructuredQuery

from sluice.adapters.queries import QUERIES_FILE, declarations
from sluice.settings import Settings, env_name
from sluice.topology import REPO_TOPOLOGY, Topology, load_topology, parse_topology
from testkit.firestore_indexes import Indexes, unserved
from testkit.hcl import Config, HclError, Ref, Scope
from testkit.terraform import ROOT, TERRAFORM, VARIABLES
from testkit.topologies import mutated

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


# Settings every function gets from the deployment itself, whatever it needs.
DEPLOYMENT_SETTINGS = {"SLUICE_FIRESTORE_DATABASE", "SLUICE_TOPIC_PREFIX"}


def test_each_function_gets_exactly_the_settings_it_needs(tf, topology):
    functions = tf.resources("google_cloudfunctions2_function", "function")
    for name, spec in topology.functions.items():
        service = block(functions[name], "service_config")
        env = service["environment_variables"]
        plain = {k for k in env if k.startswith("SLUICE_")} - DEPLOYMENT_SETTINGS
        secret = {s["key"] for s in service.get("secret_environment_variables", [])}
        assert not plain & secret, name
        assert plain | secret == {env_name(n) for n in [*spec.needs, *spec.uses]}, name
        assert env["GOOGLE_CLOUD_PROJECT"] == "sluice-prod"
        assert env["SLUICE_FIRESTORE_DATABASE"] == "google_firestore_database.database.name"
        assert env["SLUICE_TOPIC_PREFIX"] == ""
    assert {env_name(f) for f in Settings.model_fields} >= DEPLOYMENT_SETTINGS


def test_a_setting_set_for_the_deployment_reaches_the_functions_that_use_it(topology):
    # terraform.tfvars' settings: what a deployment chooses (the model), or the defaults.
    chosen = Config(TERRAFORM, {**VARIABLES, "settings": {"ai_model": "gpt-4.1"}})
    functions = chosen.resources("google_cloudfunctions2_function", "function")
    users = {name for name, spec in topology.functions.items() if "ai_model" in spec.uses}
    assert users == {"batch-item-processor"}
    for name in topology.functions:
        env = block(functions[name], "service_config")["environment_variables"]
        assert env.get("SLUICE_AI_MODEL") == ("gpt-4.1" if name in users else None), name
    env = block(functions["batch-item-processor"], "service_config")["environment_variables"]
    assert env["SLUICE_WHATSAPP_API_VERSION"] == "v21.0"  # the default, given all the same


def test_secrets_are_the_topologys_and_come_from_secret_manager(tf, topology):
    secrets = set(topology.secrets)
    keys = {p.endpoint.api_key for p in topology.providers.values() if p.endpoint}
    assert secrets and secrets <= set(Settings.model_fields) | keys
    declared = tf.resources("google_secret_manager_secret", "setting")
    assert {k: v["secret_id"] for k, v in declared.items()} == {
        n: f"sluice-{n.replace('_', '-')}" for n in secrets
    }
    functions = tf.resources("google_cloudfunctions2_function", "function")
    readers = tf.resources("google_secret_manager_secret_iam_member", "reader")
    for name, spec in topology.functions.items():
        mounted = block(functions[name], "service_config").get("secret_environment_variables", [])
        needed = sorted(set(spec.needs) & secrets)
        assert [m["key"] for m in mounted] == [env_name(n) for n in needed], name
        assert [m["secret"] for m in mounted] == [
            f'google_secret_manager_secret.setting["{n}"].secret_id' for n in needed
        ]
        assert sorted(k.split("/")[1] for k in readers if k.startswith(f"{name}/")) == needed
    for binding in readers.values():
        assert binding["role"] == "roles/secretmanager.secretAccessor"


def test_a_setting_the_topology_makes_secret_becomes_a_mounted_secret(tmp_path, topology):
    tf, changed = changed_copy(tmp_path, {"secrets": [*topology.secrets, "status_api_url"]})
    assert "status_api_url" in tf.resources("google_secret_manager_secret", "setting")
    fn = tf.resources("google_cloudfunctions2_function", "function")["webhook-ingest"]
    service = block(fn, "service_config")
    assert "SLUICE_STATUS_API_URL" not in service["environment_variables"]
    mounted = {m["key"] for m in service["secret_environment_variables"]}
    assert "SLUICE_STATUS_API_URL" in mounted
    readers = tf.resources("google_secret_manager_secret_iam_member", "reader")
    assert [k for k in readers if k.endswith("_url")] == ["webhook-ingest/status_api_url"]
    assert "status_api_url" in changed.secrets


def test_a_secret_version_is_stored_only_for_a_value_given(topology):
    given = {**VARIABLES, "secrets": {"whatsapp_app_secret": {"value": "s3cret"},
                                      "ai_provider_api_key": {}}}  # fmt: skip
    versions = Config(TERRAFORM, given).resources("google_secret_manager_secret_version", "setting")
    assert list(versions) == ["whatsapp_app_secret"]
    assert versions["whatsapp_app_secret"]["secret_data"] == "s3cret"


def test_each_provider_a_kind_calls_is_reached_at_its_given_url_with_its_own_secret(tf, topology):
    functions = tf.resources("google_cloudfunctions2_function", "function")
    config = block(functions["batch-item-processor"], "service_config")
    env = config["environment_variables"]
    assert env["SLUICE_IMAGE_MODEL_URL"] == VARIABLES["provider_urls"]["image-model"]
    assert env["SLUICE_VIDEO_VENDOR_URL"] == VARIABLES["provider_urls"]["video-vendor"]
    mounted = {s["key"] for s in config["secret_environment_variables"]}
    assert {"SLUICE_IMAGE_MODEL_API_KEY", "SLUICE_VIDEO_VENDOR_API_KEY"} <= mounted
    assert "SLUICE_IMAGE_MODEL_API_KEY" not in env


def test_a_provider_a_kind_calls_without_a_url_is_refused_before_anything_is_created():
    given = {**VARIABLES, "provider_urls": {"image-model": "https://images.example"}}
    with pytest.raises(HclError, match=r"var\.provider_urls: give the URL of every provider the "
                       r"kinds call \(image-model, video-vendor\)"):  # fmt: skip
        Config(TERRAFORM, given).resources("google_cloudfunctions2_function", "function")


def test_a_secret_value_for_a_setting_that_is_no_secret_is_refused():
    given = {**VARIABLES, "secrets": {"ai_model": {"value": "gpt"}}}
    with pytest.raises(HclError, match=r"var\.secrets: the names are the topology's secrets: "):
        Config(TERRAFORM, given).resources("google_secret_manager_secret", "setting")


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


def test_firestore_has_the_indexes_the_declared_queries_need_and_a_ttl_on_message_records(tf):
    indexes = tf.resources("google_firestore_index", "composite")
    shapes = {
        name: (i["collection"], i["query_scope"],
               tuple((f["field_path"], f["order"]) for f in i["fields"]))
        for name, i in indexes.items()
    }  # fmt: skip
    assert shapes == {
        "items-succeeded-before": ("items", "COLLECTION", (
            ("state", "ASCENDING"), ("finished_at", "ASCENDING"), ("__name__", "ASCENDING"))),
        "rows-stranded": ("rows", "COLLECTION_GROUP", (
            ("written", "ASCENDING"), ("queued_at", "ASCENDING"), ("__name__", "ASCENDING"))),
    }  # fmt: skip
    exports = tf.resources("google_firestore_field", "collection_group")
    assert list(exports) == ["exports/backfill_state"]
    exports_field = exports["exports/backfill_state"]
    scopes = {i["query_scope"] for i in block(exports_field, "index_config")["indexes"]}
    assert (exports_field["collection"], exports_field["field"], scopes) == (
        "exports", "backfill_state", {"COLLECTION", "COLLECTION_GROUP"})  # fmt: skip
    for field in [*exports.values(), *indexes.values()]:
        assert field["database"] == "google_firestore_database.database.name"
    ttl = one(tf.resources("google_firestore_field", "messages_ttl"))
    assert (ttl["collection"], ttl["field"]) == ("messages", "expires_at")
    assert ttl["ttl_config"] == [{}] and ttl["index_config"] == [{}]


def declared_query_protos() -> dict[str, StructuredQuery]:
    """Each declared query, as the adapters build it, in the form it is sent."""
    client = firestore.Client(project="p", credentials=AnonymousCredentials())
    values = {"==": "v", "in": ["v"], "<": 1, "<=": 1, ">": 1, ">=": 1}
    return {
        name: q.on(client if q.group else client.document("parents/p"),
                   {f.field: values[f.op] for f in q.where})._to_protobuf()
        for name, q in declarations().items()
    }  # fmt: skip


def test_every_declared_query_is_served_by_an_index_terraform_declares(tf):
    protos = declared_query_protos()
    assert unserved(protos.values(), Indexes.of(tf)) == []
    # And each needs one: a query Firestore's own indexes serve is no declaration's business.
    assert all(unserved([proto], Indexes()) for proto in protos.values())


def test_a_query_declared_in_queries_yaml_gets_its_index(tmp_path):
    declared = yaml.safe_load(QUERIES_FILE.read_text())
    declared["items-latest-failed"] = {
        "collection": "items",
        "where": [{"field": "state", "op": "=="}],
        "order_by": [{"field": "finished_at", "direction": "DESCENDING"}],
    }
    declared["tenants-by-phone"] = {
        "collection": "tenants", "group": True,
        "where": [{"field": "phone_number_ids", "op": "in"}],
    }  # fmt: skip
    tf, _ = changed_copy(tmp_path, queries=yaml.safe_dump(declared))
    index = tf.resources("google_firestore_index", "composite")["items-latest-failed"]
    assert [(f["field_path"], f["order"]) for f in index["fields"]] == [
        ("state", "ASCENDING"), ("finished_at", "DESCENDING"), ("__name__", "DESCENDING"),
    ]  # fmt: skip
    assert "tenants/phone_number_ids" in tf.resources("google_firestore_field", "collection_group")


def test_a_query_left_out_of_queries_yaml_has_no_index_and_the_check_says_so(tmp_path):
    declared = yaml.safe_load(QUERIES_FILE.read_text())
    del declared["rows-stranded"]
    tf, _ = changed_copy(tmp_path, queries=yaml.safe_dump(declared))
    (problem,) = unserved(declared_query_protos().values(), Indexes.of(tf))
    assert problem.startswith("group rows [written equal] order by [queued_at asc]: needs a "
                              "composite index (COLLECTION_GROUP)")  # fmt: skip


def test_a_moved_resource_is_moved_to_an_instance_that_is_declared(tf):
    assert tf.blocks_of("moved")
    for move in tf.blocks_of("moved"):
        spec = Config.raw_attributes(move.body)
        source, target = (str(tf.eval(spec[end], Scope(tf))) for end in ("from", "to"))
        found = re.fullmatch(r"(\w+)\.(\w+)(?:\[(.+)\])?", target)
        assert found is not None, target
        type_, name, key = found.groups()
        assert (json.loads(key) if key else None) in tf.resources(type_, name), target
        assert source.split(".")[:2] not in [b.labels for b in tf.blocks_of("resource")], source


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


def changed_copy(
    tmp_path: Path,
    change: dict[str, Any] | None = None,
    *,
    text: str | None = None,
    queries: str | None = None,
    variables: dict[str, Any] = VARIABLES,
) -> tuple[Config, Topology]:
    """terraform/ beside a changed topology.yaml (the changes, or its whole text) and the
    queries' declaration (changed if given), as the repository lays them out."""
    shutil.copytree(TERRAFORM, tmp_path / "terraform")
    text = mutated(change or {}) if text is None else text
    (tmp_path / "topology.yaml").write_text(text)
    declaration = tmp_path / QUERIES_FILE.relative_to(ROOT)
    declaration.parent.mkdir(parents=True)
    declaration.write_text(QUERIES_FILE.read_text() if queries is None else queries)
    return Config(tmp_path / "terraform", variables), parse_topology(text)


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
    changed_copy(tmp_path)
    broken = tmp_path / "terraform" / "topology.tf"
    broken.write_text(broken.read_text().replace("local.raw.subscriptions",
                                                 "local.raw.subscriptionz"))  # fmt: skip
    with pytest.raises(HclError, match="subscriptionz"):
        Config(tmp_path / "terraform", VARIABLES).resources("google_pubsub_subscription", "push")


# -- one normalised topology ----------------------------------------------------------------------


def test_the_topology_and_the_queries_are_read_once_and_only_the_normalised_locals_are_used():
    for path in sorted(TERRAFORM.glob("*.tf")):
        text = path.read_text()
        # Defaults are filled once, in the normalised locals: no try() anywhere.
        assert "try(" not in text, path.name
        reads = re.findall(r"\b(?:yamldecode|file)\(", text)
        assert bool(reads) == (path.name in {"topology.tf", "queries.tf"}), path.name
        assert bool(re.search(r"local\.raw\b", text)) == (path.name == "topology.tf"), path.name


def test_every_optional_field_left_out_gets_the_typed_topologys_default(tmp_path):
    raw = yaml.safe_load(REPO_TOPOLOGY.read_text())
    for fn in raw["functions"].values():
        for optional in ("public", "publishes", "needs", "local_instances"):
            fn.pop(optional, None)
    # The providers' keys are optional, their URLs not: the processor needs those.
    urls = []
    for provider in raw["providers"].values():
        if "endpoint" in provider:
            provider["endpoint"].pop("api_key")
            urls.append(provider["endpoint"]["url"])
    raw["functions"]["batch-item-processor"]["needs"] = urls
    # And a remote job's polls must be published.
    raw["functions"]["batch-item-processor"]["publishes"] = ["job-polls"]
    for sub in raw["subscriptions"].values():
        sub.pop("ordering", None)
    for schedule in raw["schedules"].values():
        schedule.pop("message", None)
    del raw["secrets"]
    tf, topology = changed_copy(tmp_path, text=yaml.safe_dump(raw))
    for name, fn in tf.local("functions").items():
        spec = topology.functions[name]
        processor = name == "batch-item-processor"
        needs, publishes = (urls, ["job-polls"]) if processor else ([], [])
        assert (fn["public"], fn["publishes"], fn["needs"]) == (False, publishes, needs) == (
            spec.public, spec.publishes, spec.needs)  # fmt: skip
        assert (fn["min_instances"], fn["cpu"]) == (0, "1")
    for name, sub in tf.local("subscriptions").items():
        assert sub["ordering"] is topology.subscriptions[name].ordering is False
        assert sub["dead_letter"] == topology.dead_letter_of(name)
    for name, schedule in tf.local("schedules").items():
        assert schedule["message"] == topology.schedules[name].message == {}
    assert tf.local("secrets") == {} and topology.secrets == []
    assert tf.resources("google_secret_manager_secret", "setting") == {}


def test_a_functions_deployment_settings_left_out_are_those_of_an_entry_given_empty():
    given = Config(TERRAFORM, {**VARIABLES, "functions": {"backfill": {}, "status-api": {
        "min_instances": 2}}}).local("functions")  # fmt: skip
    assert given["backfill"]["min_instances"] == given["sheets-writer"]["min_instances"] == 0
    assert given["backfill"]["cpu"] == given["sheets-writer"]["cpu"] == "1"
    assert (given["status-api"]["min_instances"], given["status-api"]["cpu"]) == (2, "1")


def test_every_iam_grant_is_in_iam_tf_and_iam_tf_grants_only(tf):
    grants = ("_iam_member", "_iam_binding", "_iam_policy")
    resources = tf.blocks_of("resource")
    assert {b.file for b in resources if b.labels[0].endswith(grants)} == {"iam.tf"}
    assert all(b.labels[0].endswith(grants) for b in resources if b.file == "iam.tf")


# -- a prefix, so that two deployments share a project --------------------------------------------

# Every resource whose name must be unique in the project (or, for the bucket, everywhere), by
# the attribute that holds it. A resource named within one of these needs no prefix of its own.
NAMED = {
    ("google_cloudfunctions2_function", "function"): "name",
    ("google_pubsub_topic", "topic"): "name",
    ("google_pubsub_subscription", "push"): "name",
    ("google_pubsub_subscription", "parking_lot"): "name",
    ("google_service_account", "function"): "account_id",
    ("google_service_account", "pusher"): "account_id",
    ("google_service_account", "eventarc"): "account_id",
    ("google_service_account", "sheets"): "account_id",
    ("google_secret_manager_secret", "setting"): "secret_id",
    ("google_cloud_scheduler_job", "schedule"): "name",
    ("google_eventarc_trigger", "firestore"): "name",
    ("google_monitoring_alert_policy", "pubsub"): "display_name",
    ("google_storage_bucket", "sources"): "name",
    ("google_firestore_database", "database"): "name",
}
# Named inside the deployment's bucket.
NAMED_WITHIN = {("google_storage_bucket_object", "source")}


def names(tf: Config) -> dict[tuple[str, str], set[str]]:
    return {
        resource: {instance[attribute] for instance in tf.resources(*resource).values()}
        for resource, attribute in NAMED.items()
    }


def test_every_resource_named_in_the_project_is_one_the_prefix_applies_to(tf):
    for b in tf.blocks_of("resource"):
        for instance in tf.resources(*b.labels).values():
            # A name is a value of its own; a reference to another resource's is not one.
            named = [
                a for a in ("name", "account_id", "secret_id")
                if isinstance(instance.get(a), str) and not isinstance(instance[a], Ref)
            ]  # fmt: skip
            assert not named or tuple(b.labels) in NAMED.keys() | NAMED_WITHIN, b.labels


def test_unset_the_prefix_keeps_the_names_of_a_deployment_alone_in_its_project(tf, topology):
    found = names(tf)
    assert found[("google_cloudfunctions2_function", "function")] == set(topology.functions)
    assert found[("google_pubsub_topic", "topic")] == set(topology.all_topics)
    assert found[("google_pubsub_subscription", "push")] == set(topology.subscriptions)
    assert found[("google_service_account", "function")] == {
        f"sluice-{n}" for n in topology.functions
    }
    assert found[("google_service_account", "pusher")] == {"sluice-pubsub-push"}
    assert found[("google_cloud_scheduler_job", "schedule")] == {"sluice-sweeper"}
    assert found[("google_eventarc_trigger", "firestore")] == set(topology.firestore_triggers)
    assert found[("google_monitoring_alert_policy", "pubsub")] == {
        "Sluice: dead letters waiting", "Sluice: deliveries falling behind"}  # fmt: skip
    assert found[("google_storage_bucket", "sources")] == {"sluice-prod-sluice-sources"}
    assert found[("google_firestore_database", "database")] == {"(default)"}


def test_two_deployments_with_their_own_prefixes_share_no_name(tf):
    alone = names(tf)
    stg = names(Config(TERRAFORM, {**VARIABLES, "prefix": "stg"}))
    prd = names(Config(TERRAFORM, {**VARIABLES, "prefix": "prd"}))
    for resource in NAMED:
        assert not alone[resource] & stg[resource], resource
        assert not prd[resource] & stg[resource], resource
        for name in stg[resource]:
            assert name.startswith(("stg-", "Sluice stg:")) or "-stg-" in name, name
    assert stg[("google_firestore_database", "database")] == {"stg-sluice"}
    assert stg[("google_storage_bucket", "sources")] == {"sluice-prod-stg-sources"}


def test_a_prefixed_deployment_uses_its_own_topics_database_and_subscriptions(topology):
    tf = Config(TERRAFORM, {**VARIABLES, "prefix": "stg"})
    functions = tf.resources("google_cloudfunctions2_function", "function")
    for name in topology.functions:
        env = block(functions[name], "service_config")["environment_variables"]
        # The functions publish to stg-<topic> and read and write the deployment's database.
        assert env["SLUICE_TOPIC_PREFIX"] == "stg-"
        assert env["SLUICE_FIRESTORE_DATABASE"] == "google_firestore_database.database.name"
    ingest = block(functions["webhook-ingest"], "service_config")["environment_variables"]
    assert ingest["SLUICE_STATUS_API_URL"].startswith("https://stg-status-api-")
    for name, sub in tf.resources("google_pubsub_subscription", "push").items():
        # The push path names the topic as the topology does: the function dispatches on it.
        topic = topology.subscriptions[name].topic
        assert block(sub, "push_config")["push_endpoint"].endswith(f"/topics/{topic}")
    policies = tf.resources("google_monitoring_alert_policy", "pubsub").values()
    filters = [block(block(p, "conditions"), "condition_threshold")["filter"] for p in policies]
    watched = {s for f in filters for s in re.findall(r'"([^"]+)"', f.split("one_of(")[1])}
    assert watched == {f"stg-{s}" for s in topology.subscriptions} | {"stg-parked-messages"}
    for trigger in tf.resources("google_eventarc_trigger", "firestore").values():
        criteria = {c["attribute"]: c["value"] for c in trigger["matching_criteria"]}
        assert criteria["database"] == "google_firestore_database.database.name"


def test_the_longest_prefix_keeps_every_service_account_id_within_30_characters():
    tf = Config(TERRAFORM, {**VARIABLES, "prefix": "abcdefghi"})
    ids = [i["account_id"] for b in tf.blocks_of("resource", "google_service_account")
           for i in tf.resources(*b.labels).values()]  # fmt: skip
    assert max(len(i) for i in ids) <= 30
    assert all(re.fullmatch(r"[a-z][a-z0-9-]{4,28}[a-z0-9]", i) for i in ids), ids


@pytest.mark.parametrize("prefix", ["", "abcdefghij", "Stg", "stg-", "1stg"])
def test_a_prefix_that_cannot_name_everything_is_refused(prefix):
    with pytest.raises(HclError, match=r"var\.prefix: prefix: 1 to 9 lowercase letters"):
        Config(TERRAFORM, {**VARIABLES, "prefix": prefix})


def test_a_service_account_id_over_30_characters_is_refused_before_anything_is_created(tmp_path):
    raw = yaml.safe_load(REPO_TOPOLOGY.read_text())
    raw["functions"]["a-function-named-in-27-char"] = {**raw["functions"]["backfill"]}
    tf, _ = changed_copy(tmp_path, text=yaml.safe_dump(raw), variables={**VARIABLES,
                                                                      "prefix": "stg"})  # fmt: skip
    with pytest.raises(HclError, match="stg-a-function-named-in-27-char is over 30 characters"):
        tf.resources("google_service_account", "function")


# -- Terraform itself, where it is installed ------------------------------------------------------

TERRAFORM_BIN = shutil.which("terraform")
# The files Terraform can evaluate without the Google provider (which needs a download).
PROVIDER_FREE = ("topology.tf", "queries.tf", "variables.tf")


@pytest.mark.skipif(TERRAFORM_BIN is None, reason="no terraform binary on this machine")
@pytest.mark.parametrize("variables", [
    VARIABLES, {**VARIABLES, "prefix": "stg", "functions": {"backfill": {"cpu": "2"}}},
], ids=["alone", "prefixed"])  # fmt: skip
def test_terraform_evaluates_the_normalised_locals_as_this_evaluator_does(tmp_path, variables):
    copy = tmp_path / "terraform"
    copy.mkdir()
    for name in PROVIDER_FREE:
        shutil.copy(TERRAFORM / name, copy / name)
    shutil.copy(REPO_TOPOLOGY, tmp_path / "topology.yaml")
    declaration = tmp_path / QUERIES_FILE.relative_to(ROOT)
    declaration.parent.mkdir(parents=True)
    shutil.copy(QUERIES_FILE, declaration)
    ours = Config(copy, variables)
    local_names = [
        _name for b in ours.blocks_of("locals") for _name in Config.raw_attributes(b.body)
    ]
    (copy / "outputs.tf").write_text("".join(
        f'output "{n}" {{\n  value = local.{n}\n}}\n' for n in local_names))  # fmt: skip
    (copy / "terraform.tfvars.json").write_text(json.dumps(variables))
    env = {**os.environ, "TF_IN_AUTOMATION": "1", "CHECKPOINT_DISABLE": "1",
           "TF_CLI_CONFIG_FILE": os.devnull}  # fmt: skip
    for command in (["init", "-input=false"], ["apply", "-auto-approve", "-input=false"]):
        subprocess.run([TERRAFORM_BIN, *command], cwd=copy, env=env, check=True,
                       capture_output=True)  # fmt: skip
    shown = subprocess.run([TERRAFORM_BIN, "output", "-json"], cwd=copy, env=env, check=True,
                           capture_output=True, text=True).stdout  # fmt: skip
    theirs = {n: out["value"] for n, out in json.loads(shown).items()}
    assert sorted(theirs) == sorted(local_names)
    for n in local_names:
        assert json.loads(json.dumps(ours.local(n))) == theirs[n], n


@pytest.mark.skipif(TERRAFORM_BIN is None, reason="no terraform binary on this machine")
def test_the_terraform_is_formatted_as_terraform_fmt_writes_it():
    env = {**os.environ, "TF_CLI_CONFIG_FILE": os.devnull, "CHECKPOINT_DISABLE": "1"}
    found = subprocess.run([TERRAFORM_BIN, "fmt", "-check", "-diff", str(TERRAFORM)], env=env,
                           capture_output=True, text=True)  # fmt: skip
    assert found.returncode == 0, found.stdout
