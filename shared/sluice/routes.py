"""The two HTTP functions' routes: decode the request, call one handler, shape the answer.

Each function's router is built once per process by sluice.bootstrap, with the dependencies of
its routes; a route reads the request, calls its handler and turns the result into the answer
(the outcomes and problems it raises are answered by sluice.http).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from functools import partial

import flask

from sluice.adapters.intake_store import IntakeStore
from sluice.adapters.publisher import Publisher
from sluice.adapters.tenants_store import TenantStore
from sluice.domain.batches import parse_batch, validate_idempotency_key
from sluice.domain.firestore_values import document_id_refusal
from sluice.domain.paging import page_size
from sluice.domain.whatsapp import verify_handshake
from sluice.handlers.auth import Tenant, authenticate, features
from sluice.handlers.exports import SheetsDeps, configure_sheets, export_status
from sluice.handlers.health import HealthCheck
from sluice.handlers.ingest import IntakeDeps, submit_batch
from sluice.handlers.status import (
    BatchDeps,
    batch_items,
    batch_status,
    cancel_batch,
    parse_state,
    retry_failed,
)
from sluice.handlers.whatsapp_ingest import receive_delivery
from sluice.http import Handler, Router, json_response, read_body, read_json
from sluice.problems import not_found
from sluice.settings import Settings


@dataclass(frozen=True)
class IngestDeps:
    tenants: TenantStore
    intake: IntakeStore
    publisher: Publisher
    health: HealthCheck
    settings: Settings


@dataclass(frozen=True)
class StatusDeps:
    tenants: TenantStore
    batches: BatchDeps
    health: HealthCheck
    settings: Settings
    # Built on the first Sheets request: the discovery client is not loaded at every cold start.
    sheets: Callable[[], SheetsDeps]


def caller(tenants: TenantStore, request: flask.Request) -> Tenant:
    # The key first: a caller without one gets nothing read, whatever it sends.
    return authenticate(tenants, request.headers.get("Authorization"))


def known_batch_id(batch_id: str) -> str:
    """An id Firestore could not hold names no batch: a 404, before anything is read."""
    if document_id_refusal(batch_id):
        raise not_found("batch")
    return batch_id


# -- webhook-ingest --------------------------------------------------------------------------------


def create_batch(deps: IngestDeps, request: flask.Request) -> flask.Response:
    settings = deps.settings
    api = settings.topology.api
    tenant = caller(deps.tenants, request)
    body = read_body(request, api.max_body_bytes)
    key = validate_idempotency_key(request.headers.get("Idempotency-Key"))
    batch = parse_batch(
        read_json(body),
        kinds=settings.topology.batch_kinds,
        default_kind=settings.topology.default_kind,
        max_batch_items=api.max_batch_items,
        max_item_input_bytes=api.max_item_input_bytes,
        max_params_bytes=api.max_params_bytes,
        allow_loopback_callbacks=settings.allow_loopback_callbacks,
    )
    intake = IntakeDeps(
        intake=deps.intake,
        publisher=deps.publisher,
        status_api_url=settings.required("status_api_url"),
        intake_lease=timedelta(seconds=api.intake_lease_seconds),
        retry_after=api.intake_retry_after_seconds,
    )
    accepted = submit_batch(intake, tenant=tenant.id, batch=batch, idempotency_key=key)
    return json_response(accepted.body(), 202, {"Location": accepted.status_url})


def whatsapp_handshake(deps: IngestDeps, request: flask.Request) -> flask.Response:
    token = deps.settings.required("whatsapp_verify_token")
    challenge = verify_handshake(dict(request.args.items()), token)
    return flask.Response(challenge, 200, mimetype="text/plain")


def whatsapp_delivery(deps: IngestDeps, request: flask.Request) -> flask.Response:
    settings = deps.settings
    received = receive_delivery(
        deps.publisher,
        body=read_body(request, settings.topology.api.max_whatsapp_body_bytes),
        signature=request.headers.get("X-Hub-Signature-256"),
        app_secret=settings.required("whatsapp_app_secret"),
    )
    return json_response({"received": received})


# -- status-api ------------------------------------------------------------------------------------


def get_batch(deps: StatusDeps, request: flask.Request, batch_id: str) -> flask.Response:
    tenant = caller(deps.tenants, request)
    known_batch_id(batch_id)
    return json_response(batch_status(deps.batches, tenant, batch_id))


def post_retry_failed(deps: StatusDeps, request: flask.Request, batch_id: str) -> flask.Response:
    tenant = caller(deps.tenants, request)
    known_batch_id(batch_id)
    return json_response(retry_failed(deps.batches, tenant, batch_id))


def post_cancel(deps: StatusDeps, request: flask.Request, batch_id: str) -> flask.Response:
    tenant = caller(deps.tenants, request)
    known_batch_id(batch_id)
    return json_response(cancel_batch(deps.batches, tenant, batch_id))


def get_batch_items(deps: StatusDeps, request: flask.Request, batch_id: str) -> flask.Response:
    api = deps.settings.topology.api
    tenant = caller(deps.tenants, request)
    known_batch_id(batch_id)
    page = batch_items(
        deps.batches,
        tenant,
        batch_id,
        state=parse_state(request.args.get("state")),
        page_size=page_size(
            request.args.get("page_size"), default=api.default_page_size, maximum=api.max_page_size
        ),
        page_token=request.args.get("page_token"),
    )
    return json_response(page)


def post_sheets(deps: StatusDeps, request: flask.Request, batch_id: str) -> flask.Response:
    tenant = caller(deps.tenants, request)
    known_batch_id(batch_id)
    export, created = configure_sheets(deps.sheets(), tenant, batch_id)
    return json_response(export, 201 if created else 200)


def get_sheets(deps: StatusDeps, request: flask.Request, batch_id: str) -> flask.Response:
    tenant = caller(deps.tenants, request)
    known_batch_id(batch_id)
    return json_response(export_status(deps.sheets(), tenant, batch_id))


def get_me(deps: StatusDeps, request: flask.Request) -> flask.Response:
    return json_response(features(caller(deps.tenants, request)))


def get_health(health: HealthCheck, request: flask.Request) -> flask.Response:
    answer = health()
    return json_response(answer.body(), 200 if answer.ok else 503, {"Cache-Control": "no-store"})


def health_routes(health: HealthCheck) -> dict[tuple[str, str], Handler]:
    # Cloud Run's front end reserves some paths ending in "z" (/healthz among them, on run.app
    # URLs): /health answers the same, for checks from outside.
    check = partial(get_health, health)
    return {("GET", "/healthz"): check, ("GET", "/health"): check}


def ingest(deps: IngestDeps) -> Router:
    return Router({
        **health_routes(deps.health),
        ("POST", "/v1/batches"): partial(create_batch, deps),
        ("GET", "/whatsapp/webhook"): partial(whatsapp_handshake, deps),
        ("POST", "/whatsapp/webhook"): partial(whatsapp_delivery, deps),
    })  # fmt: skip


def status(deps: StatusDeps) -> Router:
    return Router({
        **health_routes(deps.health),
        ("GET", "/v1/batches/<batch_id>"): partial(get_batch, deps),
        ("GET", "/v1/batches/<batch_id>/items"): partial(get_batch_items, deps),
        ("POST", "/v1/batches/<batch_id>/retry-failed"): partial(post_retry_failed, deps),
        ("POST", "/v1/batches/<batch_id>/cancel"): partial(post_cancel, deps),
        ("POST", "/v1/batches/<batch_id>/sheets"): partial(post_sheets, deps),
        ("GET", "/v1/batches/<batch_id>/sheets"): partial(get_sheets, deps),
        ("GET", "/v1/me"): partial(get_me, deps),
    })  # fmt: skip
