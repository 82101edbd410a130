"""The local cloud gives each function the settings its `needs` lists and no others, as Terraform
does (tests/deploy/test_terraform.py), plus what only the local cloud has: the emulators, the
deployment's topology and the local servers standing in for the outside services."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from localcloud.cloud import Deployment
from localcloud.functions import WITHHELD
from localcloud.processes import spawn
from sluice.settings import Settings, env_name
from sluice.topology import load_topology

EMULATORS = {"PUBSUB_EMULATOR_HOST": "127.0.0.1:1", "FIRESTORE_EMULATOR_HOST": "127.0.0.1:2"}
LOCAL_ONLY = {"SLUICE_TOPOLOGY", "SLUICE_WHATSAPP_GRAPH_URL", "SLUICE_SHEETS_ENDPOINT",
              "SLUICE_ALLOW_LOOPBACK_CALLBACKS"}  # fmt: skip


def deployment(tmp_path: Path, **kwargs: Any) -> Deployment:
    """A deployment not started: its servers' ports and status-api's URL made up."""
    cloud = SimpleNamespace(log_dir=tmp_path, emulators=SimpleNamespace(env=lambda: EMULATORS))
    d = Deployment(cloud, "test-env", functions={"status-api": SimpleNamespace(url="http://s")},
                   **kwargs)  # type: ignore[arg-type]  # fmt: skip
    d.server_ports.update(provider=1001, graph=1002, sheets=1003)
    d.server_ports.update({name: 1010 + n for n, name in enumerate(d.endpoint_providers)
                           if name != "ai"})  # fmt: skip
    return d


@pytest.mark.parametrize("name", sorted(load_topology().functions))
def test_each_function_gets_the_settings_its_needs_list_and_only_those(tmp_path, name):
    d = deployment(tmp_path)
    spec = d.topology.functions[name]
    env = d.function_env(spec)
    settings = {k for k in env if k.startswith("SLUICE_")}
    given = d.settings()
    uses = {env_name(n) for n in spec.uses if n in given}
    assert settings - LOCAL_ONLY - uses == {env_name(n) for n in spec.needs}
    assert {k: env[k] for k in uses} == {env_name(n): given[n] for n in spec.uses if n in given}
    assert settings >= LOCAL_ONLY
    assert env["GOOGLE_CLOUD_PROJECT"] == "test-env"
    assert {k: env[k] for k in EMULATORS} == EMULATORS
    assert env["SLUICE_TOPOLOGY"] == str(d.topology_path)


def test_secrets_go_only_to_the_functions_that_need_them(tmp_path):
    d = deployment(tmp_path)
    env = {name: d.function_env(spec) for name, spec in d.topology.functions.items()}
    assert env["webhook-ingest"]["SLUICE_WHATSAPP_APP_SECRET"] == d.whatsapp["app_secret"]
    assert env["batch-item-processor"]["SLUICE_AI_PROVIDER_API_KEY"] == d.ai_api_key
    assert env["batch-item-processor"]["SLUICE_AI_PROVIDER_URL"] == d.provider_url
    # Each provider a kind's steps call: its URL and its own key, to the processor only.
    assert env["batch-item-processor"]["SLUICE_VIDEO_VENDOR_URL"] == d.provider_server_url(
        "video-vendor"
    )
    keys = {env_name(p.endpoint.api_key) for p in d.topology.providers.values()
            if p.endpoint and p.endpoint.api_key}  # fmt: skip
    assert len({env["batch-item-processor"][k] for k in keys}) == len(keys) >= 3
    for name in ("sheets-writer", "backfill", "status-api"):
        assert not {"SLUICE_WHATSAPP_APP_SECRET", "SLUICE_WHATSAPP_ACCESS_TOKEN",
                    *keys} & set(env[name]), name  # fmt: skip


def test_a_need_taken_out_of_the_topology_is_not_given(tmp_path):
    needs = ["whatsapp_app_secret", "whatsapp_verify_token"]
    d = deployment(tmp_path, topology_overrides={"functions": {"webhook-ingest": {"needs": needs}}})
    assert "SLUICE_STATUS_API_URL" not in d.function_env(d.topology.functions["webhook-ingest"])


def test_every_setting_a_function_needs_has_a_local_value(tmp_path):
    values = deployment(tmp_path).settings()
    needed = {n for spec in load_topology().functions.values() for n in spec.needs}
    assert needed <= set(values)
    endpoints = {n for p in load_topology().providers.values() if p.endpoint
                 for n in (p.endpoint.url, p.endpoint.api_key) if n}  # fmt: skip
    assert set(values) <= set(Settings.model_fields) | endpoints


def test_a_function_process_inherits_no_setting_from_whoever_started_it(tmp_path, monkeypatch):
    monkeypatch.setenv("SLUICE_STATUS_API_URL", "http://from-the-shell")
    probe = "import json, os; print(json.dumps(dict(os.environ)))"
    log = tmp_path / "probe.log"
    proc = spawn([sys.executable, "-c", probe], log_path=log, env={"SLUICE_GIVEN": "yes"},
                 withhold=WITHHELD)  # fmt: skip
    assert proc.wait(30) == 0
    seen = json.loads(log.read_text())
    assert [k for k in seen if k.startswith("SLUICE_")] == ["SLUICE_GIVEN"]
    assert seen["PATH"] == os.environ["PATH"]  # the rest is inherited
