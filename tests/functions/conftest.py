"""Functions in-process through functions-framework's test client, on the emulators."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from flask.testing import FlaskClient
from functions_framework import create_app

from localcloud.cloud import LocalCloud
from sluice import wiring
from sluice.adapters.clients import publisher_client
from sluice.settings import get_settings
from sluice.topology import load_topology

APP_SECRET = "functions-test-app-secret"
VERIFY_TOKEN = "functions-test-verify-token"
SERVICES = Path(__file__).resolve().parents[2] / "services"


@pytest.fixture
def function_client(
    local_cloud: LocalCloud, project: str, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Callable[[str], FlaskClient]]:
    """A test client for a function, configured for this test's project."""
    monkeypatch.setenv("GOOGLE_CLOUD_PROJECT", project)
    monkeypatch.setenv("SLUICE_STATUS_API_URL", "http://status.invalid")
    # Nothing listens here: a test that reaches the provider fails loudly.
    monkeypatch.setenv("SLUICE_AI_PROVIDER_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("SLUICE_AI_PROVIDER_API_KEY", "sk-test")
    monkeypatch.setenv("SLUICE_WHATSAPP_GRAPH_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("SLUICE_WHATSAPP_APP_SECRET", APP_SECRET)
    monkeypatch.setenv("SLUICE_WHATSAPP_VERIFY_TOKEN", VERIFY_TOKEN)
    monkeypatch.setenv("SLUICE_WHATSAPP_ACCESS_TOKEN", "token")
    # Every adapter wiring builds once per process, and the settings they were built from.
    wired = [f for f in vars(wiring).values() if callable(getattr(f, "cache_clear", None))]
    caches = (get_settings, publisher_client, *wired)
    for cached in caches:
        cached.cache_clear()

    def client(name: str) -> FlaskClient:
        # A fresh process would read the environment anew: so does a fresh client here.
        for cached in caches:
            cached.cache_clear()
        function = load_topology().functions[name]
        app = create_app(
            function.entry_point, str(SERVICES / name / "main.py"), function.signature_type
        )
        return app.test_client()

    yield client
    for cached in caches:
        cached.cache_clear()
