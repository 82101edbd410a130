"""Bad input gets a clear error and changes nothing (on the local cloud, over HTTP)."""

from __future__ import annotations

import base64
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from google.cloud import firestore

from localcloud.cloud import Deployment, LocalCloud
from sluice.adapters.tenants_store import NewTenant, TenantStore
from testkit.client import bearer

# One worker runs the whole module, so that its two shared deployments are deployed once, not
# once on each worker that takes one of its tests.
pytestmark = [pytest.mark.cloud, pytest.mark.xdist_group("bad-input")]

# Two deployments serve the whole module (deploying one per test was most of its time): `quiet`
# for the tests whose bad input must change nothing (none of them gives it any work, so "no job,
# no provider call" holds for its whole life), `busy` for those that submit a good batch too.
# Each test makes tenants of its own.
accepts_work = pytest.mark.accepts_work


def _shared(local_cloud: LocalCloud) -> Iterator[Deployment]:
    deployment = local_cloud.deploy(f"test-{uuid.uuid4().hex[:10]}")
    yield deployment
    deployment.stop(wait=False)


quiet = pytest.fixture(scope="module", name="quiet")(_shared)
busy = pytest.fixture(scope="module", name="busy")(_shared)


@pytest.fixture
def deployment(request: pytest.FixtureRequest) -> Deployment:
    shared = "busy" if request.node.get_closest_marker("accepts_work") else "quiet"
    found: Deployment = request.getfixturevalue(shared)
    return found


@pytest.fixture
def project(deployment: Deployment) -> str:
    return deployment.project


@pytest.fixture
def make_tenant(db: firestore.Client) -> Callable[..., NewTenant]:
    def make(name: str = "acme", **kwargs: Any) -> NewTenant:
        return TenantStore(db).create(f"{name}-{uuid.uuid4().hex[:8]}", **kwargs)

    return make


@pytest.fixture
def ingest(deployment) -> str:
    return deployment.url("webhook-ingest") + "/v1/batches"


def nothing_changed(db, http, deployment) -> None:
    assert list(db.collection("jobs").limit(1).stream()) == []
    assert http.get(deployment.provider_url + "/_sluice/stats").json()["requests"] == 0


GOOD = {"kind": "chat", "items": [{"input": "a"}]}


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer sk_not-a-key"}, {"Authorization": "Basic dXNlcjpwYXNz"}],
)
def test_a_missing_or_wrong_key_is_a_401(http, deployment, ingest, db, make_tenant, headers):
    make_tenant()
    r = http.post(ingest, json=GOOD, headers=headers)
    assert r.status_code == 401
    assert r.headers["content-type"] == "application/problem+json"
    nothing_changed(db, http, deployment)


def test_a_kind_not_declared_is_a_400_listing_the_kinds(http, deployment, ingest, db, make_tenant):
    key = make_tenant().api_key
    # WhatsApp's kind is declared, but it is no batch's: a batch naming it is refused too.
    declared = ", ".join(k for k in deployment.topology.kinds if k != "whatsapp")
    assert declared == "chat, staging"
    for kind in ("ocr", "whatsapp"):
        r = http.post(ingest, json={**GOOD, "kind": kind}, headers=bearer(key))
        assert r.status_code == 400
        [error] = r.json()["errors"]
        assert error["field"] == "kind" and error["message"].endswith(
            f"unknown kind {kind!r}: the kinds declared are {declared}"
        )
    nothing_changed(db, http, deployment)


def test_invalid_fields_are_a_400_naming_each(http, deployment, ingest, db, make_tenant):
    key = make_tenant().api_key
    bad = {"kind": "has space", "items": [{"input": "ok"}, {"id": "a/b", "input": 1}, {}],
           "callback_url": "ftp://x"}  # fmt: skip
    r = http.post(ingest, json=bad, headers=bearer(key))
    assert r.status_code == 400
    assert r.headers["content-type"] == "application/problem+json"
    fields = {e["field"] for e in r.json()["errors"]}
    assert fields == {"kind", "items.1.id", "items.2.input", "callback_url"}
    r = http.post(ingest, content=b"{not json", headers=bearer(key))
    assert r.status_code == 400 and r.json()["title"] == "Invalid JSON"
    nothing_changed(db, http, deployment)


def test_a_body_over_the_limit_is_a_413(http, deployment, ingest, db, make_tenant):
    key = make_tenant().api_key
    limit = deployment.topology.api.max_body_bytes
    huge = b'{"kind": "chat","items":[{"input":"' + b"x" * limit + b'"}]}'
    r = http.post(ingest, content=huge, headers=bearer(key))
    assert r.status_code == 413
    too_many = {
        "kind": "chat",
        "items": [{"input": 1}] * (deployment.topology.api.max_batch_items + 1),
    }
    r = http.post(ingest, json=too_many, headers=bearer(key))
    assert r.status_code == 400 and r.json()["errors"][0]["field"] == "items"
    nothing_changed(db, http, deployment)


@accepts_work
def test_an_idempotency_key_returns_the_same_batch_or_a_409(http, deployment, ingest, make_tenant):
    key = make_tenant().api_key
    headers = {**bearer(key), "Idempotency-Key": "order-42"}
    first = http.post(ingest, json=GOOD, headers=headers)
    # The same body in another key order and spacing is the same request.
    again = http.post(ingest, content=b'{ "items": [{"input": "a"}], "kind": "chat" }',
                      headers=headers)  # fmt: skip
    assert first.status_code == again.status_code == 202
    assert first.json()["batch_id"] == again.json()["batch_id"]

    other = http.post(ingest, json={"kind": "chat", "items": [{"input": "b"}]}, headers=headers)
    assert other.status_code == 409
    assert other.headers["content-type"] == "application/problem+json"
    status = http.get(first.json()["status_url"], headers=bearer(key)).json()
    assert status["total"] == 1


@accepts_work
def test_another_tenants_batch_is_a_404(http, deployment, ingest, make_tenant):
    alice, bob = make_tenant("alice").api_key, make_tenant("bob").api_key
    batch = http.post(ingest, json=GOOD, headers=bearer(alice)).json()
    for url in (batch["status_url"], batch["status_url"] + "/items"):
        assert http.get(url, headers=bearer(bob)).status_code == 404
        assert http.get(url, headers=bearer(alice)).status_code == 200
    missing = deployment.url("status-api") + "/v1/batches/nope"
    assert http.get(missing, headers=bearer(alice)).status_code == 404


@accepts_work
def test_bad_listing_parameters_are_a_400(http, deployment, ingest, make_tenant):
    key = make_tenant().api_key
    batch = http.post(ingest, json=GOOD, headers=bearer(key)).json()
    items = batch["status_url"] + "/items"
    for params in ({"state": "done"}, {"page_size": "0"}, {"page_token": "@@"}):
        r = http.get(items, params=params, headers=bearer(key))
        assert r.status_code == 400, params
        assert list(r.json()["errors"][0]) == ["field", "message"]


def test_unknown_routes_and_methods_are_problems_not_500s(http, deployment, ingest):
    assert http.get(ingest).status_code == 405
    assert http.post(deployment.url("webhook-ingest") + "/nope").status_code == 404


NESTED_21: object = 1
for _ in range(21):
    NESTED_21 = {"a": NESTED_21}


@pytest.mark.parametrize(
    "bad",
    [
        {"items": [{"input": "ok"}, {"input": [[1, 2]]}]},
        {"items": [{"input": "ok"}, {"input": NESTED_21}]},
        {"items": [{"input": "ok"}, {"input": {"meta": {"__key__": 1}}}]},
        {"items": [{"input": "ok"}, {"input": {"": 1}}]},
        {"items": [{"input": "ok"}, {"input": 2**64}]},
        {"items": [{"input": "ok"}, {"input": "fine"}], "params": {"p": [[1]]}},
    ],
)
def test_input_firestore_refuses_is_a_400_naming_the_item_and_field(
    http, deployment, ingest, db, make_tenant, bad
):
    key = make_tenant().api_key
    headers = {**bearer(key), "Idempotency-Key": "refused"}
    r = http.post(ingest, json={"kind": "chat", **bad}, headers=headers)
    assert r.status_code == 400, r.text
    assert r.headers["content-type"] == "application/problem+json"
    [error] = r.json()["errors"]
    assert error["field"] == ("params" if "params" in bad else "items.1.input")
    assert "Firestore cannot store it" in error["message"]
    nothing_changed(db, http, deployment)


@accepts_work
def test_a_body_too_large_for_one_commit_is_written_in_several(
    http, deployment, ingest, db, make_tenant
):
    # 100 items of 60 KB: 6 MB of writes, over the emulator's request limit (4 MiB; 10 MiB in
    # the cloud) if sent in one commit, as 500 items at a time were.
    key = make_tenant().api_key
    text = "x" * (deployment.topology.api.max_item_input_bytes - 5000)
    items = [{"id": f"i{n}", "input": text} for n in range(100)]
    r = http.post(ingest, json={"kind": "chat", "items": items}, headers=bearer(key))
    assert r.status_code == 202, r.text
    job = db.collection("jobs").document(r.json()["batch_id"])
    assert len(list(job.collection("items").select([]).stream())) == 100
    assert job.collection("items").document("i99").get().to_dict()["input"] == text


def test_params_over_their_limit_are_a_400(http, deployment, ingest, db, make_tenant):
    key = make_tenant().api_key
    big = {"instructions": "x" * deployment.topology.api.max_params_bytes}
    r = http.post(ingest, json={**GOOD, "params": big}, headers=bearer(key))
    assert r.status_code == 400 and r.json()["errors"][0]["field"] == "params"
    nothing_changed(db, http, deployment)


def test_the_key_is_checked_before_the_body_is_read(http, deployment, ingest, db, make_tenant):
    make_tenant()
    limit = deployment.topology.api.max_body_bytes
    r = http.post(ingest, content=b"x" * (limit + 1), headers={"Authorization": "Bearer sk_no"})
    assert r.status_code == 401
    assert r.headers["content-type"] == "application/problem+json"
    nothing_changed(db, http, deployment)


@pytest.mark.parametrize(
    "url",
    ["http://crm.example/cb", "https://10.0.0.8/cb", "https://169.254.169.254/computeMetadata/v1",
     "https://metadata.google.internal/", "https://[fd00::1]/cb"],
)  # fmt: skip
def test_a_callback_url_into_a_private_network_or_without_tls_is_a_400(
    http, deployment, ingest, db, make_tenant, url
):
    key = make_tenant().api_key
    r = http.post(ingest, json={**GOOD, "callback_url": url}, headers=bearer(key))
    assert r.status_code == 400, r.text
    assert [e["field"] for e in r.json()["errors"]] == ["callback_url"]
    nothing_changed(db, http, deployment)


@accepts_work
def test_malformed_numbers_deep_json_and_ids_firestore_refuses_are_4xx(
    http, deployment, ingest, make_tenant
):
    key = make_tenant().api_key
    r = http.post(ingest, content=b"[" * 100_000, headers=bearer(key))
    assert r.status_code == 400 and r.headers["content-type"] == "application/problem+json"
    batch = http.post(ingest, json=GOOD, headers=bearer(key)).json()
    items = batch["status_url"] + "/items"
    r = http.get(items, params={"page_size": "²"}, headers=bearer(key))
    assert r.status_code == 400 and r.json()["errors"][0]["field"] == "page_size"
    for last_id in ("..", "__x__", "x" * 1501):
        token = base64.urlsafe_b64encode(last_id.encode()).decode().rstrip("=")
        r = http.get(items, params={"page_token": token}, headers=bearer(key))
        assert r.status_code == 400, (last_id, r.text)
        assert r.json()["errors"][0]["field"] == "page_token"
    status = deployment.url("status-api") + "/v1/batches/"
    for batch_id in ("%2E%2E", "__x__", "x" * 1501, "%2E"):
        for suffix in ("", "/items", "/sheets"):
            r = http.get(status + batch_id + suffix, headers=bearer(key))
            assert r.status_code == 404, (batch_id, suffix, r.text)
            assert r.headers["content-type"] == "application/problem+json"
        for action in ("/retry-failed", "/cancel", "/sheets"):
            r = http.post(status + batch_id + action, headers=bearer(key))
            assert r.status_code in (403, 404), (batch_id, action, r.text)
