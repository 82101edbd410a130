"""The settings object: each function starts only with the values its topology entry needs."""

from __future__ import annotations

import os

import pytest
from pydantic import ValidationError

from sluice.settings import MissingSetting, Settings
from sluice.topology import load_topology

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


def test_every_need_in_the_topology_is_a_setting():
    fields = set(Settings.model_fields)
    for name, function in load_topology().functions.items():
        assert set(function.needs) <= fields, name
