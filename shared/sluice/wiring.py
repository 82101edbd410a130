"""Dependencies, wired in one place: every function builds its adapters here, once per process."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta
from functools import cache

from google.cloud import firestore

from sluice.adapters.ai_provider import AIProvider
from sluice.adapters.callback_sender import CallbackSender
from sluice.adapters.clients import firestore_client, http_client, publisher_client
from sluice.adapters.conversations_store import ConversationStore
from sluice.adapters.exports_store import ExportStore
from sluice.adapters.jobs_store import JobStore
from sluice.adapters.limiter import Limiter
from sluice.adapters.publisher import Publisher
from sluice.adapters.whatsapp_api import WhatsAppAPI
from sluice.handlers.exports import SheetsDeps
from sluice.handlers.health import HealthCheck
from sluice.handlers.processor import Capacity
from sluice.handlers.whatsapp import WhatsAppDeps
from sluice.messages import WORK_ITEMS
from sluice.settings import Settings, get_settings


def settings() -> Settings:
    return get_settings()


def db() -> firestore.Client:
    """The deployment's Firestore database: one client per process."""
    s = settings()
    return firestore_client(s.project, s.firestore_database)


@cache
def job_store() -> JobStore:
    s = settings()
    work = s.topology.work
    return JobStore(db(), shards=work.counter_shards, cache_bytes=work.job_cache_bytes)


@cache
def publisher() -> Publisher:
    s = settings()
    timeout = s.topology.api.publish_timeout_seconds
    return Publisher(publisher_client(), s.project, timeout=timeout, prefix=s.topic_prefix)


@cache
def ai_provider() -> AIProvider:
    s = settings()
    limits = s.topology.providers["ai"]
    return AIProvider(
        http_client(),
        base_url=s.required("ai_provider_url"),
        api_key=s.required("ai_provider_api_key"),
        model=s.ai_model,
        timeout=limits.timeout_seconds,
    )


@cache
def whatsapp_api() -> WhatsAppAPI:
    s = settings()
    return WhatsAppAPI(
        http_client(),
        base_url=s.whatsapp_graph_url,
        version=s.whatsapp_api_version,
        token=s.required("whatsapp_access_token"),
        timeout=s.topology.providers["whatsapp"].timeout_seconds,
    )


@cache
def whatsapp_deps() -> WhatsAppDeps:
    return WhatsAppDeps(
        store=job_store(),
        conversations=ConversationStore(
            db(),
            keep=timedelta(days=settings().topology.retention.whatsapp_message_days),
        ),
        ai=ai_provider(),
        whatsapp=whatsapp_api(),
        # Replies are interactive: they go ahead of bulk work for the AI provider's capacity.
        # Counted per business number: one number's flood leaves slots to everyone else.
        ai_capacity=replace(
            capacity("ai", interactive=True),
            holder_cap=settings().topology.providers["ai"].number_max_concurrent,
        ),
        send_capacity=capacity("whatsapp", interactive=True),
        publisher=publisher(),
    )


@cache
def limiter(provider: str) -> Limiter:
    """One per provider and process: every instance shares its state through Firestore."""
    s = settings()
    work = s.topology.work
    return Limiter(
        db(),
        provider,
        s.topology.providers[provider],
        shards=work.rate_shards,
        recovery_seconds=work.recovery_seconds,
        # Tenants' queued items are what the AI provider's bulk capacity is shared by; a
        # callback or a WhatsApp send has no backlog of that kind to yield to.
        backlog=job_store().tenant_backlogs if provider == "ai" else dict,
    )


def capacity(provider: str, *, interactive: bool) -> Capacity:
    return Capacity(
        limiter(provider),
        interactive=interactive,
        wait_seconds=settings().topology.work.capacity_wait_seconds,
    )


@cache
def callback_sender() -> CallbackSender:
    s = settings()
    timeout = s.topology.providers["callbacks"].timeout_seconds
    return CallbackSender(http_client(), timeout=timeout, allow_loopback=s.allow_loopback_callbacks)


@cache
def health() -> HealthCheck:
    api = settings().topology.api
    return HealthCheck(
        {
            "pubsub": lambda: publisher().ping(WORK_ITEMS),
            "firestore": lambda: job_store().ping(api.health_timeout_seconds),
        },
        timeout=api.health_timeout_seconds,
        cache_seconds=api.health_cache_seconds,
    )


@cache
def export_store() -> ExportStore:
    return ExportStore(db())


@cache
def sheets_deps() -> SheetsDeps:
    # Imported here: the discovery client is only loaded by the functions that export (and by
    # status-api on its first configure-sheets), not at every cold start.
    from sluice.adapters.sheets_api import SheetsAPI

    s = settings()
    return SheetsDeps(
        exports=export_store(),
        jobs=job_store(),
        sheets=SheetsAPI(
            endpoint=s.sheets_endpoint,
            timeout=s.topology.providers["sheets"].timeout_seconds,
            service_account=s.sheets_service_account,
        ),
        limiter=limiter("sheets"),
        settings=s.topology.exports,
    )
