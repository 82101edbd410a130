"""The composition root: each function's dependencies, built once per process, in one place.

Each function's builder (`batch_item_processor()`, ...) reads the settings, builds one client of
each kind and every adapter over them (`Root`), and returns what that function's entry point hands
its requests or events to: the processor's push
endpoint (a handler per subscription, checked against topology.yaml), the two Firestore triggers'
handlers, and the two HTTP functions' routers. Nothing else builds an adapter, and no handler
reaches back here: each is given the dependencies of its use case as one small dataclass.

Each `services/<name>/main.py` calls it on its first request (`Once`), not at import, so that a
module can be imported (by the packaging check, by a gunicorn master before it forks) without
settings or connections.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import replace
from datetime import timedelta
from functools import partial
from typing import Any, Generic, TypeVar

from google.cloud import firestore

from sluice import routes
from sluice.adapters import clients
from sluice.adapters.callback_sender import CallbackSender
from sluice.adapters.callbacks_store import CallbackStore
from sluice.adapters.conversations_store import ConversationStore
from sluice.adapters.exports_store import ExportStore
from sluice.adapters.intake_store import IntakeStore
from sluice.adapters.items_store import ItemStore
from sluice.adapters.job_paths import JobPaths
from sluice.adapters.jobs_store import JobStore
from sluice.adapters.limiter import Limiter
from sluice.adapters.provider_api import ProviderAPI
from sluice.adapters.publisher import Publisher
from sluice.adapters.tenants_store import TenantStore
from sluice.adapters.whatsapp_api import WhatsAppAPI
from sluice.clock import now
from sluice.eventarc import DocumentChange
from sluice.handlers.callbacks import CallbackDeps, send_completion_callback
from sluice.handlers.dead_letters import DeadLetterDeps, handle_dead_letter
from sluice.handlers.exports import SheetsDeps, on_export_written, on_row_queued
from sluice.handlers.health import HealthCheck
from sluice.handlers.processor import (
    Capacity,
    Claiming,
    ClaimRules,
    StepProvider,
    WorkItemDeps,
    handle_work_item,
)
from sluice.handlers.status import BatchDeps
from sluice.handlers.sweeper import IntakeTimes, SweepDeps, sweep
from sluice.handlers.whatsapp import WhatsAppDeps, handle_event
from sluice.http import Router
from sluice.messages import (
    BATCH_EVENTS,
    JOB_POLLS,
    SWEEPS,
    WHATSAPP_EVENTS,
    WORK_ITEMS,
    BatchCompleted,
    Sweep,
    WhatsAppEventMessage,
    WorkItem,
)
from sluice.outcomes import Ack
from sluice.push import Delivery, Handler, PushEndpoint
from sluice.settings import Settings, settings_topology_path
from sluice.topology import WHATSAPP_KIND, ProviderName, Topology, load_topology

T = TypeVar("T")

PROCESSOR = "batch-item-processor"


class Once(Generic[T]):
    """`build()` on the first call, from whichever thread comes first; the same value after."""

    def __init__(self, build: Callable[[], T]) -> None:
        self._build = build
        self._lock = threading.Lock()
        self._value: T | None = None

    def __call__(self) -> T:
        if self._value is None:
            with self._lock:
                if self._value is None:
                    self._value = self._build()
        return self._value


class Root:
    """One process's clients and adapters, each built on first use and then shared."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.topology = settings.topology
        self._built: dict[str, Any] = {}
        self._lock = threading.RLock()

    def _one(self, key: str, build: Callable[[], T]) -> T:
        with self._lock:
            if key not in self._built:
                self._built[key] = build()
            value: T = self._built[key]
            return value

    # -- clients (one of each per process) --------------------------------------------------------

    def db(self) -> firestore.Client:
        s = self.settings
        return self._one("db", lambda: clients.firestore_client(s.project, s.firestore_database))

    def publisher(self) -> Publisher:
        return self._one("publisher", lambda: Publisher(
            clients.publisher_client(), self.settings.project,
            timeout=self.topology.api.publish_timeout_seconds, prefix=self.settings.topic_prefix,
            allowed=self._publishes(),
        ))  # fmt: skip

    def _publishes(self) -> frozenset[str] | None:
        function = self.topology.functions.get(self.settings.function or "")
        return None if function is None else frozenset(function.publishes)

    def http(self) -> Any:
        return self._one("http", clients.http_client)

    # -- adapters -------------------------------------------------------------------------------

    def paths(self) -> JobPaths:
        shards = self.topology.work.counter_shards
        return self._one("paths", lambda: JobPaths(self.db(), shards=shards))

    def jobs(self) -> JobStore:
        cache = self.topology.work.job_cache_bytes
        return self._one("jobs", lambda: JobStore(self.paths(), cache_bytes=cache))

    def items(self) -> ItemStore:
        return self._one("items", lambda: ItemStore(self.paths(), steps_of=self.counted_steps))

    def counted_steps(self, job_id: str) -> tuple[str, ...]:
        """The steps of a job's kind counted one by one: a pipeline's (see ItemStore)."""
        kind = self.topology.kinds.get(str(self.jobs().job_meta(job_id).get("kind")))
        return tuple(kind.steps) if kind is not None and len(kind.steps) > 1 else ()

    def intake(self) -> IntakeStore:
        return self._one("intake", lambda: IntakeStore(self.paths()))

    def callback_store(self) -> CallbackStore:
        return self._one("callbacks", lambda: CallbackStore(self.db()))

    def tenants(self) -> TenantStore:
        return self._one("tenants", lambda: TenantStore(self.db()))

    def exports(self) -> ExportStore:
        return self._one("exports", lambda: ExportStore(self.db()))

    def limiter(self, provider: ProviderName) -> Limiter:
        """One per provider and process: every instance shares its state through Firestore."""
        work, spec = self.topology.work, self.topology.providers[provider]
        if self.topology.poll_seconds(provider) is not None:
            # A provider of remote jobs: its slots are running jobs, its rate what the polls of
            # those jobs leave for starting more (checked when the topology loads).
            spec = spec.model_copy(
                update={"requests_per_minute": self.topology.job_start_rate(provider)}
            )
        return self._one(f"limiter:{provider}", lambda: Limiter(
            self.db(), provider, spec,
            shards=work.rate_shards, recovery_seconds=work.recovery_seconds,
            # Tenants' queued items are what the capacity of a provider the kinds' steps call
            # is shared by; a callback or a WhatsApp send has no backlog of that kind.
            backlog=self.jobs().tenant_backlogs if spec.endpoint else dict,
        ))  # fmt: skip

    def capacity(self, provider: ProviderName, *, interactive: bool) -> Capacity:
        return Capacity(
            self.limiter(provider),
            interactive=interactive,
            wait_seconds=self.topology.work.capacity_wait_seconds,
        )

    def provider_api(self, provider: ProviderName) -> ProviderAPI:
        """The adapter of a provider with an endpoint, from the settings it declares."""
        s, spec = self.settings, self.topology.providers[provider]
        assert spec.endpoint is not None, f"provider {provider} has no endpoint"
        endpoint = spec.endpoint
        return self._one(f"api:{provider}", lambda: ProviderAPI(
            self.http(), base_url=s.required(endpoint.url),
            api_key=s.required(endpoint.api_key) if endpoint.api_key else "",
            model=s.ai_model, timeout=spec.timeout_seconds,
        ))  # fmt: skip

    def ai(self) -> ProviderAPI:
        return self.provider_api("ai")

    def whatsapp_api(self) -> WhatsAppAPI:
        s = self.settings
        return self._one("whatsapp_api", lambda: WhatsAppAPI(
            self.http(), base_url=s.whatsapp_graph_url, version=s.whatsapp_api_version,
            token=s.required("whatsapp_access_token"),
            timeout=self.topology.providers["whatsapp"].timeout_seconds,
        ))  # fmt: skip

    def health(self) -> HealthCheck:
        api = self.topology.api
        return self._one("health", lambda: HealthCheck(
            {
                "pubsub": lambda: self.publisher().ping(WORK_ITEMS),
                "firestore": lambda: self.jobs().ping(api.health_timeout_seconds),
            },
            timeout=api.health_timeout_seconds, cache_seconds=api.health_cache_seconds,
        ))  # fmt: skip

    # -- use cases --------------------------------------------------------------------------------

    def rules(self) -> ClaimRules:
        work = self.topology.work
        return ClaimRules(lease_seconds=work.lease_seconds, max_attempts=work.max_attempts)

    def claiming(self) -> Claiming:
        return Claiming(jobs=self.jobs(), items=self.items(), rules=self.rules())

    def work_items(self) -> WorkItemDeps:
        t = self.topology
        kinds = {name: t.kinds[name] for name in t.batch_kinds}
        called = {step.provider for kind in kinds.values() for step in kind.steps.values()}
        return WorkItemDeps(
            claiming=self.claiming(),
            kinds={name: kind.plan() for name, kind in kinds.items()},
            default_kind=self.topology.default_kind,
            # Bulk work: behind interactive replies for each provider's capacity, shared fairly
            # by tenants.
            providers={name: StepProvider(self.provider_api(name),
                                          self.capacity(name, interactive=False))
                       for name in sorted(called)},
            publisher=self.publisher(),
        )  # fmt: skip

    def whatsapp(self) -> WhatsAppDeps:
        called = {step.provider for step in self.topology.kinds[WHATSAPP_KIND].steps.values()}
        return self._one("whatsapp", lambda: WhatsAppDeps(
            claiming=self.claiming(), intake=self.intake(), tenants=self.tenants(),
            conversations=ConversationStore(
                self.db(), keep=timedelta(days=self.topology.retention.whatsapp_message_days)
            ),
            reply=self.topology.kinds[WHATSAPP_KIND].plan(),
            providers={name: self.provider_api(name) for name in called if name != "whatsapp"},
            whatsapp=self.whatsapp_api(),
            # Replies are interactive: they go ahead of bulk work for each provider's capacity.
            # Counted per business number: one number's flood leaves slots to others.
            capacities={name: replace(
                self.capacity(name, interactive=True),
                holder_cap=self.topology.providers[name].number_max_concurrent,
            ) for name in called},
            publisher=self.publisher(),
        ))  # fmt: skip

    def callbacks(self) -> CallbackDeps:
        t = self.topology
        (delivery,) = (s for s in t.subscriptions.values() if s.topic == BATCH_EVENTS)
        return CallbackDeps(
            jobs=self.jobs(), callbacks=self.callback_store(), tenants=self.tenants(),
            sender=CallbackSender(
                self.http(), timeout=t.providers["callbacks"].timeout_seconds,
                allow_loopback=self.settings.allow_loopback_callbacks,
            ),
            capacity=self.capacity("callbacks", interactive=False),
            quiet=timedelta(seconds=t.quiet_after(BATCH_EVENTS)),
            lease=timedelta(seconds=delivery.ack_deadline_seconds),
            backoff=timedelta(seconds=delivery.retry.minimum_backoff_seconds),
        )  # fmt: skip

    def sweeps(self) -> SweepDeps:
        t = self.topology
        return SweepDeps(
            intake=self.intake(), items=self.items(), jobs=self.jobs(),
            callbacks=self.callback_store(), publisher=self.publisher(),
            exports=self.exports(), whatsapp=self.whatsapp(),
            stall=timedelta(seconds=t.work.stall_seconds),
            callback_quiet=timedelta(seconds=t.quiet_after(BATCH_EVENTS)),
            export_lease=timedelta(seconds=t.exports.lease_seconds),
            intakes=IntakeTimes(
                lease=timedelta(seconds=t.api.intake_lease_seconds),
                abandon_after=timedelta(seconds=t.api.intake_abandon_seconds),
            ),
            parked_idle=timedelta(seconds=t.work.capacity_wait_seconds),
        )  # fmt: skip

    def dead_letters(self) -> DeadLetterDeps:
        return DeadLetterDeps(
            jobs=self.jobs(), items=self.items(), callbacks=self.callback_store(),
            publisher=self.publisher(), whatsapp=self.whatsapp(),
        )  # fmt: skip

    def sheets(self) -> SheetsDeps:
        # Imported here: the discovery client is only loaded by the functions that export (and
        # by status-api on its first configure-sheets), not at every cold start.
        from sluice.adapters.sheets_api import SheetsAPI

        s = self.settings
        return self._one("sheets", lambda: SheetsDeps(
            exports=self.exports(), jobs=self.jobs(), items=self.items(),
            sheets=SheetsAPI(
                endpoint=s.sheets_endpoint, service_account=s.sheets_service_account,
                timeout=self.topology.providers["sheets"].timeout_seconds,
            ),
            limiter=self.limiter("sheets"), settings=self.topology.exports,
        ))  # fmt: skip


# -- batch-item-processor: a handler per topic, a subscription per handler -----------------------


# The topics whose messages the processor handles (besides their dead-letter topics).
PROCESSOR_TOPICS = (WORK_ITEMS, WHATSAPP_EVENTS, BATCH_EVENTS, SWEEPS, JOB_POLLS)
DEAD_LETTERED = (WORK_ITEMS, WHATSAPP_EVENTS, BATCH_EVENTS, JOB_POLLS)


def processor_handlers(root: Root) -> dict[str, Handler]:
    """What each topic's messages become, decoded into their message type first (an unreadable
    message raises ValidationError, which the push endpoint acknowledges)."""
    work, whatsapp = Once(root.work_items), Once(root.whatsapp)
    callbacks, sweeps, dead = Once(root.callbacks), Once(root.sweeps), Once(root.dead_letters)

    def work_item(d: Delivery) -> Ack:
        return handle_work_item(work(), WorkItem.model_validate_json(d.message.data))

    def job_poll(d: Delivery) -> Ack:
        message = WorkItem.model_validate_json(d.message.data)
        return handle_work_item(work(), message, poll=d.attempt or 0)

    def whatsapp_event(d: Delivery) -> Ack:
        return handle_event(whatsapp(), WhatsAppEventMessage.model_validate_json(d.message.data))

    def batch_event(d: Delivery) -> Ack:
        event = BatchCompleted.model_validate_json(d.message.data)
        return send_completion_callback(callbacks(), event, chain=d.message.message_id)

    def sweep_tick(d: Delivery) -> Ack:
        Sweep.model_validate_json(d.message.data or b"{}")
        return sweep(sweeps(), now=now())

    handlers: dict[str, Handler] = dict(zip(
        PROCESSOR_TOPICS, (work_item, whatsapp_event, batch_event, sweep_tick, job_poll),
        strict=True,
    ))  # fmt: skip
    for source in DEAD_LETTERED:
        dead_letter = root.topology.topics[source].dead_letter
        if dead_letter:
            handlers[dead_letter] = partial(_dead_letter, dead, source)
    return handlers


def check_subscriptions(topology: Topology, function: str, handled: set[str]) -> None:
    """Refuse to start when a subscription pushing to `function` has no handler, or a handled
    topic no subscription: either would fail only when its first message came (or never)."""
    subscriptions = topology.subscriptions_of(function)
    topics = {sub.topic for sub in subscriptions.values()}
    problems = [f"subscription {n}: no handler for topic {s.topic!r}"
                for n, s in subscriptions.items() if s.topic not in handled]  # fmt: skip
    problems += [f"topic {t!r} has a handler but no subscription pushing it to {function}"
                 for t in sorted(handled - topics)]  # fmt: skip
    if problems:
        raise RuntimeError(f"{function} cannot start: " + "; ".join(problems))


def check_batch_item_processor(topology: Topology | None = None) -> None:
    """At import of the processor's main.py: its subscriptions against its handlers."""
    topology = topology or load_topology(settings_topology_path())
    dead_letters = {topology.topics[t].dead_letter for t in DEAD_LETTERED if t in topology.topics}
    handled = {*PROCESSOR_TOPICS, *(t for t in dead_letters if t)}
    check_subscriptions(topology, PROCESSOR, handled)


def _dead_letter(deps: Callable[[], DeadLetterDeps], source: str, d: Delivery) -> Ack:
    return handle_dead_letter(deps(), source, d.message)


def push_endpoint(root: Root, function: str, by_topic: dict[str, Handler]) -> PushEndpoint:
    """The function's subscriptions in topology.yaml, each with the handler of its topic."""
    check_subscriptions(root.topology, function, set(by_topic))
    subscriptions = root.topology.subscriptions_of(function)
    publisher = Once(root.publisher)

    def republish(d: Delivery) -> None:
        publisher().republish(subscriptions[d.subscription].topic, d.message)

    return PushEndpoint(
        {name: by_topic[sub.topic] for name, sub in subscriptions.items()},
        republish=republish, prefix=root.settings.topic_prefix,
    )  # fmt: skip


# -- the functions: what each entry point hands its requests or events to ---------------------


def settings() -> Settings:
    return Settings()  # type: ignore[call-arg]  # values come from the environment


def batch_item_processor() -> PushEndpoint:
    root = Root(settings())
    return push_endpoint(root, PROCESSOR, processor_handlers(root))


def sheets_writer() -> Callable[[DocumentChange], Ack]:
    sheets = Once(Root(settings()).sheets)
    return lambda change: on_row_queued(sheets(), change)


def backfill() -> Callable[[DocumentChange], Ack]:
    sheets = Once(Root(settings()).sheets)
    return lambda change: on_export_written(sheets(), change)


def webhook_ingest() -> Router:
    root = Root(settings())
    return routes.ingest(routes.IngestDeps(
        tenants=root.tenants(), intake=root.intake(), publisher=root.publisher(),
        health=root.health(),
        settings=root.settings,
    ))  # fmt: skip


def status_api() -> Router:
    root = Root(settings())
    batches = BatchDeps(
        jobs=root.jobs(), items=root.items(), publisher=root.publisher(),
        kinds={name: {step.name: step.provider for step in kind.plan().steps}
               for name, kind in root.topology.kinds.items()},
        default_kind=root.topology.default_kind,
        requests_per_minute={name: root.topology.job_start_rate(name)
                             for name in root.topology.providers},
    )  # fmt: skip
    return routes.status(routes.StatusDeps(
        tenants=root.tenants(), batches=batches, health=root.health(), settings=root.settings,
        sheets=Once(root.sheets),
    ))  # fmt: skip
