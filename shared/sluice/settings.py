"""One typed settings object for every function, read from the environment once per process.

A missing required value fails at start-up with the variable's name, not at the first request.
The emulator hosts (PUBSUB_EMULATOR_HOST, FIRESTORE_EMULATOR_HOST) are read by Google's client
libraries themselves: set them and the same code talks to the emulators.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

from pydantic import AliasChoices, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from sluice.topology import REPO_TOPOLOGY, Topology, load_topology


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SLUICE_", frozen=True, extra="ignore")

    project: str = Field(validation_alias=AliasChoices("GOOGLE_CLOUD_PROJECT", "SLUICE_PROJECT"))
    topology_path: Path = Field(default=REPO_TOPOLOGY, validation_alias="SLUICE_TOPOLOGY")
    # Base URL of status-api, used to build the `status_url` answered for a new batch.
    status_api_url: str
    # An OpenAI-compatible chat completions API (the local provider server in local runs).
    ai_provider_url: str
    ai_provider_api_key: SecretStr = SecretStr("")
    ai_model: str = "sluice-default"
    # WhatsApp Cloud API: from Secret Manager in the cloud, from the environment locally.
    whatsapp_app_secret: SecretStr
    whatsapp_verify_token: SecretStr
    whatsapp_access_token: SecretStr
    whatsapp_graph_url: str = "https://graph.facebook.com"
    whatsapp_api_version: str = "v21.0"
    # Google Sheets: unset in the cloud (sheets.googleapis.com, with the function's service
    # account); the local Sheets server's URL in local runs.
    sheets_endpoint: str | None = None

    @property
    def topology(self) -> Topology:
        return load_topology(self.topology_path)


@cache
def get_settings() -> Settings:
    return Settings()  # type: ignore[call-arg]  # values come from the environment
