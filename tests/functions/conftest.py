"""Functions in-process through functions-framework's test client, on the emulators."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from flask.testing import FlaskClient
from functions_framework import create_app

from localcloud.cloud import LocalCloud
from sluice.topology import load_topology

APP_SECRET = "functions-test-app-secret"
VERIFY_TOKEN = "functions-test-verify-token"
SERVICES = Path(__file__).resolve().parents[2] / "services"


@pytest.fixture
def function_client(
    local_cloud: LocalCloud, project: str, monkeypatch: pytest.MonkeyPatch
) -> Callable[[str], FlaskClient]:
    """A test client for a function, configured for this test's project."""
    monkeypatch.setenv("GOOGLE_CLOUD_PROJECT", project)
    monkeypatch.setenv("SLUICE_STATUS_API_URL", "http://status.invalid")
    # Nothing listens here: a test that reaches the provider fails loudly.
    monkeypatch.setenv("SLUICE_AI_PROVIDER_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("SLUICE_AI_PROVIDER_API_KEY", "sk-test")
    for provider in ("IMAGE_MODEL", "VIDEO_VENDOR"):
        monkeypatch.setenv(f"SLUICE_{provider}_URL", "http://127.0.0.1:9")
        monkeypatch.setenv(f"SLUICE_{provider}_API_KEY", "sk-test")
    monkeypatch.setenv("SLUICE_WHATSAPP_GRAPH_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("SLUICE_WHATSAPP_APP_SECRET", APP_SECRET)
    monkeypatch.setenv("SLUICE_WHATSAPP_VERIFY_TOKEN", VERIFY_TOKEN)
    monkeypatch.setenv("SLUICE_WHATSAPP_ACCESS_TOKEN", "token")

    def client(name: str) -> FlaskClient:
        # A fresh app executes main.py anew, as a fresh process would: its dependencies are
        # built from the environment as it is now, on its first request.
        function = load_topology().functions[name]
        app = create_app(
            function.entry_point, str(SERVICES / name / "main.py"), function.signature_type
        )
        return app.test_client()

    return client
