"""The two HTTP functions' routes: decode the request, call one handler, shape the answer."""

from __future__ import annotations

from datetime import timedelta

import flask

from sluice import wiring
from sluice.domain.batches import parse_batch, validate_idempotency_key
from sluice.domain.firestore_values import document_id_refusal
from sluice.domain.paging import page_size
from sluice.domain.whatsapp import verify_handshake
from sluice.handlers.auth import authenticate
from sluice.handlers.exports import configure_sheets, export_status, features
from sluice.handlers.ingest import submit_batch
from sluice.handlers.status import (
    batch_items,
    batch_status,
    cancel_batch,
    parse_state,
    retry_failed,
)
from sluice.handlers.whatsapp_ingest import receive_delivery
from sluice.http import Router, json_response, read_body, read_json
from sluice.problems import not_found


def create_batch(request: flask.Request) -> flask.Response:
    settings = wiring.settings()
    api = settings.topology.api
    store = wiring.job_store()
    # The key first: a caller without one gets nothing read, whatever it sends.
    tenant = authenticate(store, request.headers.get("Authorization"))
    body = read_body(request, api.max_body_bytes)
    key = validate_idempotency_key(request.headers.get("Idempotency-Key"))
    batch = parse_batch(
        read_json(body),
        max_batch_items=api.max_batch_items,
        max_item_input_bytes=api.max_item_input_bytes,
        max_params_bytes=api.max_params_bytes,
        allow_loopback_callbacks=settings.allow_loopback_callbacks,
    )
    accepted = submit_batch(
        store,
        wiring.publisher(),
        tenant=tenant.id,
        batch=batch,
        idempotency_key=key,
        status_api_url=settings.required("status_api_url"),
        intake_lease=timedelta(seconds=api.intake_lease_seconds),
        retry_after=api.intake_retry_after_seconds,
    )
    return json_response(accepted.body(), 202, {"Location": accepted.status_url})


def known_batch_id(batch_id: str) -> str:
    """An id Firestore could not hold names no batch: a 404, before anything is read."""
    if document_id_refusal(batch_id):
        raise not_found("batch")
    return batch_id


def get_batch(request: flask.Request, batch_id: str) -> flask.Response:
    store = wiring.job_store()
    tenant = authenticate(store, request.headers.get("Authorization"))
    known_batch_id(batch_id)
    rpm = wiring.settings().topology.providers["ai"].requests_per_minute
    return json_response(batch_status(store, tenant, batch_id, requests_per_minute=rpm))


def post_retry_failed(request: flask.Request, batch_id: str) -> flask.Response:
    store = wiring.job_store()
    tenant = authenticate(store, request.headers.get("Authorization"))
    known_batch_id(batch_id)
    return json_response(retry_failed(store, wiring.publisher(), tenant, batch_id))


def post_cancel(request: flask.Request, batch_id: str) -> flask.Response:
    store = wiring.job_store()
    tenant = authenticate(store, request.headers.get("Authorization"))
    known_batch_id(batch_id)
    return json_response(cancel_batch(store, tenant, batch_id))


def get_batch_items(request: flask.Request, batch_id: str) -> flask.Response:
    api = wiring.settings().topology.api
    store = wiring.job_store()
    tenant = authenticate(store, request.headers.get("Authorization"))
    known_batch_id(batch_id)
    page = batch_items(
        store,
        tenant,
        batch_id,
        state=parse_state(request.args.get("state")),
        page_size=page_size(
            request.args.get("page_size"), default=api.default_page_size, maximum=api.max_page_size
        ),
        page_token=request.args.get("page_token"),
    )
    return json_response(page)


def post_sheets(request: flask.Request, batch_id: str) -> flask.Response:
    tenant = authenticate(wiring.job_store(), request.headers.get("Authorization"))
    known_batch_id(batch_id)
    export, created = configure_sheets(wiring.sheets_deps(), tenant, batch_id)
    return json_response(export, 201 if created else 200)


def get_sheets(request: flask.Request, batch_id: str) -> flask.Response:
    tenant = authenticate(wiring.job_store(), request.headers.get("Authorization"))
    known_batch_id(batch_id)
    return json_response(export_status(wiring.sheets_deps(), tenant, batch_id))


def get_me(request: flask.Request) -> flask.Response:
    tenant = authenticate(wiring.job_store(), request.headers.get("Authorization"))
    return json_response(features(tenant))


def get_health(request: flask.Request) -> flask.Response:
    health = wiring.health()()
    return json_response(health.body(), 200 if health.ok else 503, {"Cache-Control": "no-store"})


def whatsapp_handshake(request: flask.Request) -> flask.Response:
    token = wiring.settings().required("whatsapp_verify_token")
    challenge = verify_handshake(dict(request.args.items()), token)
    return flask.Response(challenge, 200, mimetype="text/plain")


def whatsapp_delivery(request: flask.Request) -> flask.Response:
    settings = wiring.settings()
    received = receive_delivery(
        wiring.publisher(),
        body=read_body(request, settings.topology.api.max_whatsapp_body_bytes),
        signature=request.headers.get("X-Hub-Signature-256"),
        app_secret=settings.required("whatsapp_app_secret"),
    )
    return json_response({"received": received})


# Cloud Run's front end reserves some paths ending in "z" (/healthz among them, on run.app URLs):
# /health answers the same, for checks from outside.
HEALTH = {("GET", "/healthz"): get_health, ("GET", "/health"): get_health}

ingest = Router(
    {
        **HEALTH,
        ("POST", "/v1/batches"): create_batch,
        ("GET", "/whatsapp/webhook"): whatsapp_handshake,
        ("POST", "/whatsapp/webhook"): whatsapp_delivery,
    }
)

status = Router(
    {
        **HEALTH,
        ("GET", "/v1/batches/<batch_id>"): get_batch,
        ("GET", "/v1/batches/<batch_id>/items"): get_batch_items,
        ("POST", "/v1/batches/<batch_id>/retry-failed"): post_retry_failed,
        ("POST", "/v1/batches/<batch_id>/cancel"): post_cancel,
        ("POST", "/v1/batches/<batch_id>/sheets"): post_sheets,
        ("GET", "/v1/batches/<batch_id>/sheets"): get_sheets,
        ("GET", "/v1/me"): get_me,
    }
)
