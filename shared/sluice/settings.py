"""One typed settings object for every function, read from the environment once per process.

Which values a function needs is declared in `topology.yaml` (`needs`; `uses` for those it
reads when given and defaults otherwise): in a function (K_SERVICE
names it, in the cloud and in the local cloud alike) a missing one fails when the settings are
first read, with the variable's name; elsewhere `required()` says which one is missing.
The emulator hosts (PUBSUB_EMULATOR_HOST, FIRESTORE_EMULATOR_HOST) are read by Google's client
libraries themselves: set them and the same code talks to the emulators.

The settings of the providers a kind's steps call are declared in `topology.yaml` too (each
provider's `endpoint`): they are read from the environment by the names declared there, so a
provider added to the topology needs no change here.

Which settings are secrets is declared once, in `topology.yaml` (`secrets`), which Terraform reads
too: the settings object never shows their values (in its repr, nor in a validation error).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pydantic import AliasChoices, Field, PrivateAttr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from sluice.topology import REPO_TOPOLOGY, Topology, load_topology


class Settings(BaseSettings):
    # An error never quotes what it was given: the environment holds the secrets.
    model_config = SettingsConfigDict(
        env_prefix="SLUICE_", frozen=True, extra="ignore", hide_input_in_errors=True
    )

    project: str = Field(validation_alias=AliasChoices("GOOGLE_CLOUD_PROJECT", "SLUICE_PROJECT"))
    topology_path: Path = Field(default=REPO_TOPOLOGY, validation_alias="SLUICE_TOPOLOGY")
    # Base URL of status-api, used to build the `status_url` answered for a new batch.
    status_api_url: str | None = None
    # An OpenAI-compatible chat completions API (the local provider server in local runs).
    ai_provider_url: str | None = None
    ai_provider_api_key: str | None = None
    ai_model: str = "sluice-default"
    # WhatsApp Cloud API. The secrets (topology.yaml's `secrets`) come from Secret Manager in the
    # cloud, from the environment locally.
    whatsapp_app_secret: str | None = None
    whatsapp_verify_token: str | None = None
    whatsapp_access_token: str | None = None
    whatsapp_graph_url: str = "https://graph.facebook.com"
    whatsapp_api_version: str = "v21.0"
    # Google Sheets: unset in the cloud (sheets.googleapis.com, with the function's service
    # account); the local Sheets server's URL in local runs.
    sheets_endpoint: str | None = None
    # The service account every function acts as towards Sheets (it owns the spreadsheets). With
    # an endpoint (local runs) no credentials are sent and it only names the local stand-in.
    sheets_service_account: str | None = None
    # Completion callbacks may go to loopback addresses, over plain http too. Only the local
    # cloud sets it (its CRM receivers listen on 127.0.0.1); in the cloud a callback must be https
    # to a public address.
    allow_loopback_callbacks: bool = False

    # The deployment's Firestore database, and what the names of its topics and subscriptions
    # start with: Terraform sets them from its `prefix`, so that two deployments share a project
    # (unset: one per project). The push endpoint strips the prefix from a subscription's name to
    # find the subscription topology.yaml declares.
    firestore_database: str = "(default)"
    topic_prefix: str = ""

    # The function this process serves (Cloud Run sets K_SERVICE; so does the local cloud).
    function: str | None = Field(default=None, validation_alias="K_SERVICE")

    # The providers' endpoint settings that are no field above, by name, from the environment.
    _endpoints: dict[str, str] = PrivateAttr(default_factory=dict)

    @property
    def topology(self) -> Topology:
        return load_topology(self.topology_path)

    def _known(self) -> set[str]:
        """Every setting's name: the fields above and the providers' endpoint settings."""
        endpoints = {n for p in self.topology.providers.values() if p.endpoint
                     for n in (p.endpoint.url, p.endpoint.api_key) if n}  # fmt: skip
        return set(type(self).model_fields) | endpoints

    @model_validator(mode="after")
    def _read_endpoints(self) -> Settings:
        for name in self._known() - set(type(self).model_fields):
            value = os.environ.get(env_name(name))
            if value:
                self._endpoints[name] = value
        return self

    @model_validator(mode="after")
    def _secrets_are_settings(self) -> Settings:
        unknown = sorted(set(self.topology.secrets) - self._known())
        if unknown:
            raise ValueError(f"topology secrets that are no setting: {', '.join(unknown)}")
        return self

    @model_validator(mode="after")
    def _function_settings_are_settings(self) -> Settings:
        named = {n for f in self.topology.functions.values() for n in (*f.needs, *f.uses)}
        unknown = sorted(named - self._known())
        if unknown:
            raise ValueError(f"topology needs or uses that are no setting: {', '.join(unknown)}")
        return self

    @model_validator(mode="after")
    def _function_needs(self) -> Settings:
        spec = self.topology.functions.get(self.function or "")
        if spec is not None:
            missing = [env_name(n) for n in spec.needs if self._value(n) is None]
            if missing:
                raise ValueError(f"{self.function} cannot start: {', '.join(missing)} not set")
        return self

    def __repr_args__(self) -> Iterator[tuple[str | None, Any]]:
        """What repr() and str() show: a secret that is set, only as set."""
        secrets = set(self.topology.secrets)
        for name, value in super().__repr_args__():
            yield name, (MASK if name in secrets and value not in (None, "") else value)

    def _value(self, name: str) -> str | None:
        """Setting `name` as text, or None when unset or empty."""
        fields = type(self).model_fields
        value = getattr(self, name) if name in fields else self._endpoints.get(name)
        return None if value in (None, "") else str(value)

    def required(self, name: str) -> str:
        """The value of setting `name`; raises MissingSetting if unset."""
        value = self._value(name)
        if value is None:
            raise MissingSetting(f"{env_name(name)} is not set")
        return value


MASK = "**********"


class MissingSetting(RuntimeError):
    """A value this code path needs was not given to the process."""


def env_name(setting: str) -> str:
    return f"SLUICE_{setting.upper()}"


def settings_topology_path() -> Path:
    """The topology file the settings would read (SLUICE_TOPOLOGY), without the other settings:
    for checks made when a function's module is imported."""
    return Path(os.environ.get("SLUICE_TOPOLOGY") or REPO_TOPOLOGY)
