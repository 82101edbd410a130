"""webhook-ingest's WhatsApp endpoint under random and mutated payloads: never a 500.

Signed with the right secret, so every payload gets past the signature and into the parser and
the publisher (the emulator's): what a compromised or buggy sender could send.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from google.cloud import pubsub_v1  # type: ignore[attr-defined]
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from testkit.whatsapp_payloads import change, delivery, signed, status, text_message
from tests.functions.conftest import APP_SECRET

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner,
                                                                 max_size=4),
    max_leaves=20,
)  # fmt: skip

VALID = delivery(
    change("123", messages=[text_message("111", "hello")],
           statuses=[status("wamid.a", "read", "111")]),
)  # fmt: skip


def paths(node: Any, prefix: tuple = ()) -> list[tuple]:
    """Every place in a JSON document that a mutation can replace."""
    found = [prefix]
    if isinstance(node, dict):
        for key, value in node.items():
            found += paths(value, (*prefix, key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            found += paths(value, (*prefix, index))
    return found


def replaced(doc: Any, path: tuple, value: Any) -> Any:
    if not path:
        return value
    copy = json.loads(json.dumps(doc))
    node = copy
    for step in path[:-1]:
        node = node[step]
    node[path[-1]] = value
    return copy


@pytest.fixture
def client(function_client, project):
    publisher = pubsub_v1.PublisherClient()
    publisher.create_topic(name=publisher.topic_path(project, "whatsapp-events"))
    return function_client("webhook-ingest")


FUZZ = settings(max_examples=60, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture])  # fmt: skip


@FUZZ
@given(payload=json_values)
def test_random_json_is_answered_without_a_500(client, payload):
    body, headers = signed(json.dumps(payload).encode(), APP_SECRET)
    response = client.post("/whatsapp/webhook", data=body, headers=headers)
    assert response.status_code in (200, 400), response.data


@FUZZ
@given(data=st.data())
def test_mutated_deliveries_are_answered_without_a_500(client, data):
    path = data.draw(st.sampled_from(paths(VALID)))
    payload = replaced(VALID, path, data.draw(json_values))
    body, headers = signed(json.dumps(payload).encode(), APP_SECRET)
    response = client.post("/whatsapp/webhook", data=body, headers=headers)
    assert response.status_code in (200, 400), (path, response.data)
    if response.status_code == 400:
        assert response.headers["content-type"] == "application/problem+json"


@FUZZ
@given(raw=st.binary(max_size=200))
def test_bytes_that_are_not_json_are_a_400(client, raw):
    body, headers = signed(raw, APP_SECRET)
    response = client.post("/whatsapp/webhook", data=body, headers=headers)
    assert response.status_code in (200, 400)
