"""A WhatsApp reply through batch-item-processor (functions-framework's test client, the
emulators, the local Graph API and provider servers): recorded before and after it is sent, so a
delivery after a failure finishes the item instead of sending again."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator

import pytest
import yaml
from google.api_core.exceptions import ServiceUnavailable
from google.cloud import pubsub_v1  # type: ignore[attr-defined]
from google.cloud.firestore_v1.base_query import FieldFilter
from werkzeug.serving import make_server

from localcloud import graph_server, provider_server
from localcloud.cloud import merge
from sluice.adapters.conversations_store import ConversationStore
from sluice.adapters.tenants_store import TenantStore
from sluice.topology import REPO_TOPOLOGY
from testkit.pushes import push_body
from testkit.whatsapp_payloads import text_message

PHONE = "100000000000009"
LEASE_SECONDS = 5


@pytest.fixture
def served() -> Iterator[dict[str, str]]:
    """The local Graph API and AI provider, served over real HTTP from this process."""
    apps = {"graph": graph_server.create_app(graph_server.GraphConfig(access_token="token")),
            "provider": provider_server.create_app(api_key="sk-test")}  # fmt: skip
    servers = {name: make_server("127.0.0.1", 0, app, threaded=True) for name, app in apps.items()}
    for server in servers.values():
        threading.Thread(target=server.serve_forever, daemon=True).start()
    yield {name: f"http://127.0.0.1:{server.server_port}" for name, server in servers.items()}
    for server in servers.values():
        server.shutdown()


@pytest.fixture
def processor(function_client, served, monkeypatch, tmp_path, db):
    # A lease short enough to outwait, with provider timeouts that fit in it.
    quick = {
        "work": {
            "lease_seconds": LEASE_SECONDS,
            "capacity_wait_seconds": 1,
            "bookkeeping_seconds": 1,
        },
        "providers": {
            "ai": {"timeout_seconds": 1},
            "whatsapp": {"timeout_seconds": 1},
            "image-model": {"timeout_seconds": 1},
            "video-vendor": {"timeout_seconds": 1},
        },
    }
    topology = merge(yaml.safe_load(REPO_TOPOLOGY.read_text()), quick)  # fmt: skip
    (tmp_path / "topology.yaml").write_text(yaml.safe_dump(topology))
    monkeypatch.setenv("SLUICE_TOPOLOGY", str(tmp_path / "topology.yaml"))
    monkeypatch.setenv("SLUICE_WHATSAPP_GRAPH_URL", served["graph"])
    monkeypatch.setenv("SLUICE_AI_PROVIDER_URL", served["provider"])
    TenantStore(db).create("shop")
    TenantStore(db).add_phone("shop", PHONE)
    return function_client("batch-item-processor")


def deliver(client, project: str, event: dict) -> int:
    body = push_body(json.dumps(event).encode(), topic="whatsapp-events", message_id="m1")
    return client.post(f"/projects/{project}/topics/whatsapp-events", json=body).status_code


def test_recording_the_sent_reply_failing_once_never_sends_it_twice(
    processor, served, project, db, http, monkeypatch
):
    message = text_message("16315551181", "Do you deliver on Sundays?")
    event = {"kind": "message", "phone_number_id": PHONE, "body": message}
    record_outbound = ConversationStore.record_outbound
    failures = []

    def fails_once(self, *args, **kwargs):
        if not failures:
            failures.append(args)
            raise ServiceUnavailable("Firestore unavailable")
        return record_outbound(self, *args, **kwargs)

    monkeypatch.setattr(ConversationStore, "record_outbound", fails_once)
    publisher = pubsub_v1.PublisherClient()
    publisher.create_topic(name=publisher.topic_path(project, "whatsapp-events"))
    # The reply's steps, a wave a delivery: intent and draft, then compose (each brings the
    # message back for the next), then the send.
    assert deliver(processor, project, event) == 200
    assert deliver(processor, project, event) == 200
    # Sent, then the bookkeeping failed: not acknowledged, so Pub/Sub delivers it again.
    assert deliver(processor, project, event) == 500
    sent = http.get(served["graph"] + "/_sluice/messages").json()
    assert len(sent) == 1

    time.sleep(LEASE_SECONDS + 0.5)  # the first delivery's claim runs out; the next takes over
    assert deliver(processor, project, event) == 200
    items = db.collection_group("items").where(filter=FieldFilter("state", "==", "succeeded"))
    (item,) = [snap.to_dict() for snap in items.stream()]
    assert item["result"]["reply_message_id"] == sent[0]["id"]
    assert http.get(served["graph"] + "/_sluice/messages").json() == sent  # nothing more sent
    # The model was not paid twice either: each step's output was kept (intent, draft, compose).
    assert http.get(served["provider"] + "/_sluice/stats").json()["requests"] == 3
    outbound = ConversationStore(db).message_ref(PHONE, "16315551181", sent[0]["id"]).get()
    assert outbound.get("in_reply_to") == message["id"]
