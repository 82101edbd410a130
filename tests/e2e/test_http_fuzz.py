"""Every route of webhook-ingest and status-api, on running function processes, under generated
paths, ids, query strings, headers and bodies: never a 5xx, and every 4xx a problem document.

Generated around real values (a tenant's key, one of its batches, a valid batch body) so that
requests get past authentication and into the handlers, where a caller's mistake must still be
a 4xx.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from testkit.client import bearer

pytestmark = pytest.mark.cloud

INGEST_ROUTES = [
    ("GET", "/healthz"), ("GET", "/health"), ("POST", "/v1/batches"),
    ("GET", "/whatsapp/webhook"), ("POST", "/whatsapp/webhook"),
]  # fmt: skip
STATUS_ROUTES = [
    ("GET", "/healthz"), ("GET", "/v1/batches/{id}"), ("GET", "/v1/batches/{id}/items"),
    ("POST", "/v1/batches/{id}/retry-failed"), ("POST", "/v1/batches/{id}/cancel"),
    ("POST", "/v1/batches/{id}/sheets"), ("GET", "/v1/batches/{id}/sheets"), ("GET", "/v1/me"),
]  # fmt: skip
METHODS = ["GET", "POST", "PUT", "DELETE", "PATCH"]

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False)
    | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4)
    | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=20,
)  # fmt: skip
header_text = st.text(
    st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=40
)
SPECIAL_IDS = ["..", ".", "__x__", "x" * 1501, "%2F", "a/b", "nope", "é", "\u00b2", " "]


def batch_bodies(good: dict[str, Any]) -> st.SearchStrategy[bytes]:
    """Valid batches with one part replaced, JSON of any shape, and bytes that are not JSON."""
    mutated = st.builds(
        lambda key, value: {**good, key: value},
        st.sampled_from(["kind", "items", "params", "callback_url", "extra"]),
        json_values,
    )
    items = st.builds(
        lambda value: {**good, "items": [{"input": value}, *good["items"]]}, json_values
    )
    deep = st.builds(lambda n, open_: (open_ * n).encode(), st.integers(1, 5000),
                     st.sampled_from(["[", '{"a":']))  # fmt: skip
    as_json = st.one_of(mutated, items, json_values).map(lambda doc: json.dumps(doc).encode())
    return st.one_of(as_json, deep, st.binary(max_size=200), st.just(json.dumps(good).encode()))


FUZZ = settings(
    max_examples=150,
    deadline=None,
    # The same examples on every run: CI is reproducible, and a failure is found again.
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def assert_answered_as_a_caller_error_or_success(response: Any, what: Any) -> None:
    assert response.status_code < 500, (what, response.status_code, response.text[:300])
    if 400 <= response.status_code < 500:
        assert response.headers["content-type"] == "application/problem+json", what
        assert response.json()["status"] == response.status_code, what


@FUZZ
@given(data=st.data())
def test_every_route_answers_without_a_5xx(http, deployment, make_tenant, data):
    # Made once per test (the fixtures are), reused by every example.
    if not hasattr(deployment, "_fuzz"):
        key = make_tenant("fuzz").api_key
        good = {"kind": "chat", "items": [{"id": "a", "input": "x"}]}
        created = http.post(deployment.url("webhook-ingest") + "/v1/batches", json=good,
                            headers=bearer(key))  # fmt: skip
        assert created.status_code == 202
        deployment._fuzz = (key, good, created.json()["batch_id"])  # type: ignore[attr-defined]
    key, good, batch_id = deployment._fuzz  # type: ignore[attr-defined]

    function, routes = data.draw(st.sampled_from([
        ("webhook-ingest", INGEST_ROUTES), ("status-api", STATUS_ROUTES)]))  # fmt: skip
    method, template = data.draw(st.sampled_from(routes))
    method = data.draw(st.sampled_from([method] * 4 + METHODS))
    raw_id = data.draw(st.sampled_from([batch_id, *SPECIAL_IDS]) | st.text(max_size=30))
    # Dots escaped too, or the client would resolve "/batches/../items" before sending it.
    path = template.replace("{id}", quote(raw_id, safe="").replace(".", "%2E") or "x")
    query = data.draw(st.dictionaries(
        st.sampled_from(["page_size", "page_token", "state", "hub.mode", "hub.verify_token",
                         "hub.challenge", "x"]),
        st.sampled_from(["", "0", "1", "501", "\u00b2", "-1", "queued", "subscribe", "@@",
                         "Li4", "X194X18"]) | st.text(max_size=20),
        max_size=3))  # fmt: skip
    # Mostly the tenant's key: the handlers behind authentication are what is fuzzed.
    other_keys = st.sampled_from(["Bearer sk_x", ""]) | header_text.map(lambda t: "Bearer " + t)
    headers = {
        "Authorization": f"Bearer {key}" if data.draw(st.integers(0, 4)) else data.draw(other_keys)
    }
    extra = data.draw(st.dictionaries(
        st.sampled_from(["Idempotency-Key", "Content-Type", "X-Hub-Signature-256"]),
        header_text, max_size=2))  # fmt: skip
    headers.update(extra)
    body = data.draw(batch_bodies(good)) if method in ("POST", "PUT", "PATCH") else b""

    url = deployment.url(function) + path
    response = http.request(method, url, params=query, headers=headers, content=body)
    assert_answered_as_a_caller_error_or_success(response, (method, url, query, headers, body))
