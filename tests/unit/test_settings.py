"""The settings object: each function starts only with the values its topology entry needs."""

from __future__ import annotations

import os

import pytest
from pydantic import ValidationError

from sluice.settings import MASK, MissingSetting, Settings
from sluice.topology import load_topology
from testkit.topologies import mutated

WEBHOOK_INGEST_ENV = {
    "SLUICE_STATUS_API_URL": "https://status.example",
    "SLUICE_WHATSAPP_APP_SECRET": "app-secret",
    "SLUICE_WHATSAPP_VERIFY_TOKEN": "verify",
}


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("SLUICE_") or name == "K_SERVICE":
            monkeypatch.delenv(name)
    monkeypatch.setenv("GOOGLE_CLOUD_PROJECT", "p")


def test_a_function_missing_what_it_needs_does_not_start(monkeypatch):
    monkeypatch.setenv("K_SERVICE", "webhook-ingest")
    for name, value in WEBHOOK_INGEST_ENV.items():
        if name != "SLUICE_WHATSAPP_APP_SECRET":
            monkeypatch.setenv(name, value)
    with pytest.raises(ValidationError, match="webhook-ingest cannot start: "
                       "SLUICE_WHATSAPP_APP_SECRET not set"):  # fmt: skip
        Settings()  # type: ignore[call-arg]


def test_an_empty_value_counts_as_missing(monkeypatch):
    monkeypatch.setenv("K_SERVICE", "webhook-ingest")
    for name, value in WEBHOOK_INGEST_ENV.items():
        monkeypatch.setenv(name, "" if name == "SLUICE_STATUS_API_URL" else value)
    with pytest.raises(ValidationError, match="SLUICE_STATUS_API_URL not set"):
        Settings()  # type: ignore[call-arg]


def test_a_function_starts_with_only_its_own_needs(monkeypatch):
    # webhook-ingest gets no AI key and no WhatsApp access token in the cloud.
    monkeypatch.setenv("K_SERVICE", "webhook-ingest")
    for name, value in WEBHOOK_INGEST_ENV.items():
        monkeypatch.setenv(name, value)
    settings = Settings()  # type: ignore[call-arg]
    assert settings.required("whatsapp_app_secret") == "app-secret"
    with pytest.raises(MissingSetting, match="SLUICE_WHATSAPP_ACCESS_TOKEN is not set"):
        settings.required("whatsapp_access_token")


def test_outside_a_function_a_missing_value_is_named_when_it_is_used():
    settings = Settings()  # type: ignore[call-arg]
    with pytest.raises(MissingSetting, match="SLUICE_AI_PROVIDER_URL is not set"):
        settings.required("ai_provider_url")


def test_every_need_and_use_in_the_topology_is_a_setting():
    topology = load_topology()
    endpoints = {n for p in topology.providers.values() if p.endpoint
                 for n in (p.endpoint.url, p.endpoint.api_key) if n}  # fmt: skip
    fields = set(Settings.model_fields) | endpoints
    for name, function in topology.functions.items():
        assert set(function.needs) | set(function.uses) <= fields, name


def test_a_provider_s_endpoint_settings_are_read_by_the_names_the_topology_gives_them(
    monkeypatch,
):
    monkeypatch.setenv("SLUICE_VIDEO_VENDOR_URL", "https://api.vendor.example")
    monkeypatch.setenv("SLUICE_VIDEO_VENDOR_API_KEY", "vendor-key")
    settings = Settings()  # type: ignore[call-arg]
    assert settings.required("video_vendor_url") == "https://api.vendor.example"
    assert settings.required("video_vendor_api_key") == "vendor-key"
    assert "vendor-key" not in repr(settings)
    with pytest.raises(MissingSetting, match="SLUICE_IMAGE_MODEL_URL is not set"):
        settings.required("image_model_url")


def test_a_topology_use_that_is_no_setting_is_refused(monkeypatch, tmp_path):
    # A renamed setting would otherwise be given under a name nothing reads.
    topology = tmp_path / "topology.yaml"
    topology.write_text(mutated({"functions.batch-item-processor.uses": ["ai_modle"]}))
    monkeypatch.setenv("SLUICE_TOPOLOGY", str(topology))
    with pytest.raises(ValidationError, match="needs or uses that are no setting: ai_modle"):
        Settings()  # type: ignore[call-arg]


def test_the_topologys_secrets_are_never_shown(monkeypatch):
    monkeypatch.setenv("K_SERVICE", "webhook-ingest")
    for name, value in WEBHOOK_INGEST_ENV.items():
        monkeypatch.setenv(name, value)
    settings = Settings()  # type: ignore[call-arg]
    for text in (repr(settings), str(settings)):
        assert "app-secret" not in text and "'verify'" not in text
        assert f"whatsapp_app_secret='{MASK}'" in text
        assert "https://status.example" in text  # not a secret
        assert "whatsapp_access_token=None" in text  # unset: nothing to hide
    assert settings.required("whatsapp_verify_token") == "verify"


def test_a_setting_the_topology_makes_secret_is_hidden_too(monkeypatch, tmp_path):
    topology = tmp_path / "topology.yaml"
    topology.write_text(mutated({"secrets": [*load_topology().secrets, "status_api_url"]}))
    monkeypatch.setenv("SLUICE_TOPOLOGY", str(topology))
    monkeypatch.setenv("SLUICE_STATUS_API_URL", "https://status.example")
    settings = Settings()  # type: ignore[call-arg]
    assert "status.example" not in repr(settings)
    assert settings.required("status_api_url") == "https://status.example"


def test_a_topology_secret_that_is_no_setting_is_refused(monkeypatch, tmp_path):
    secrets = [*load_topology().secrets, "not_a_setting"]
    raw = mutated({"secrets": secrets, "functions.backfill.needs": ["not_a_setting"]})
    topology = tmp_path / "topology.yaml"
    topology.write_text(raw)
    monkeypatch.setenv("SLUICE_TOPOLOGY", str(topology))
    with pytest.raises(ValidationError, match="topology secrets that are no setting: not_a_set"):
        Settings()  # type: ignore[call-arg]


def test_an_error_never_quotes_the_environment_it_was_given(monkeypatch):
    monkeypatch.setenv("K_SERVICE", "webhook-ingest")
    monkeypatch.setenv("SLUICE_WHATSAPP_APP_SECRET", "app-secret")
    with pytest.raises(ValidationError) as failed:
        Settings()  # type: ignore[call-arg]
    assert "app-secret" not in str(failed.value)


def test_a_prefixed_deployment_reaches_its_own_topics_and_database(monkeypatch):
    from google.cloud import pubsub_v1  # type: ignore[attr-defined]

    from sluice.adapters.clients import firestore_client
    from sluice.adapters.publisher import Publisher

    # Set by Terraform from its `prefix`; no connection is made here.
    monkeypatch.setenv("SLUICE_TOPIC_PREFIX", "stg-")
    monkeypatch.setenv("SLUICE_FIRESTORE_DATABASE", "stg-sluice")
    monkeypatch.setenv("PUBSUB_EMULATOR_HOST", "127.0.0.1:9")
    monkeypatch.setenv("FIRESTORE_EMULATOR_HOST", "127.0.0.1:9")
    s = Settings()  # type: ignore[call-arg]
    publisher = Publisher(pubsub_v1.PublisherClient(), s.project, timeout=1, prefix=s.topic_prefix)
    assert publisher.topic_path("work-items") == "projects/p/topics/stg-work-items"
    assert firestore_client(s.project, s.firestore_database)._database == "stg-sluice"


def test_unset_a_deployment_has_the_projects_default_database_and_plain_topic_names():
    s = Settings()  # type: ignore[call-arg]
    assert (s.firestore_database, s.topic_prefix) == ("(default)", "")
