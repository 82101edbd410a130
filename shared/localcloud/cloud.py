"""The local cloud: Google's emulators and every function, wired as `topology.yaml` declares.

`LocalCloud` owns what serves many projects at once (the two emulators and the trigger router);
`Deployment` is one project on it: the topics, the push subscriptions with their retry and
dead-letter policies, the Firestore triggers, the local provider server and one functions-framework
process per function. Tests deploy a fresh project per test; `make run` deploys one.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import os
import secrets
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml
from google.api_core.exceptions import AlreadyExists, GoogleAPICallError
from google.cloud import pubsub_v1  # type: ignore[attr-defined]
from google.protobuf.duration_pb2 import Duration
from google.pubsub_v1.types import DeadLetterPolicy, RetryPolicy

from localcloud.build import compile_functions
from localcloud.emulators import Emulators
from localcloud.functions import FunctionProcess
from localcloud.graph_server import ACCESS_TOKEN_ENV as GRAPH_ACCESS_TOKEN_ENV
from localcloud.job_server import API_KEY_ENV as JOB_API_KEY_ENV
from localcloud.processes import Process, listening_port, spawn_module, stop
from localcloud.provider_server import API_KEY_ENV as PROVIDER_API_KEY_ENV
from localcloud.scheduler import Scheduler
from localcloud.triggers import TriggerRouter
from localcloud.wire_meter import Usage, WireMeter
from localcloud.zygote import Zygote
from sluice.settings import env_name
from sluice.topology import REPO_TOPOLOGY, Function, Topology, parse_topology

SERVICE_ACCOUNTS = "iam.gserviceaccount.com"

log = logging.getLogger(__name__)

REPO_ROOT = REPO_TOPOLOGY.parent
SERVICES = REPO_ROOT / "services"


def merge(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """Deep-merge `overrides` into a copy of `base` (tests shrink limits this way)."""
    out = copy.deepcopy(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


class LocalCloud:
    def __init__(
        self, log_dir: Path, *, pubsub_port: int = 0, firestore_port: int = 0, router_port: int = 0
    ) -> None:
        self.log_dir = log_dir
        self.router = TriggerRouter(port=router_port)
        # Every function and local server of every deployment is forked from it.
        self.zygote = Zygote(log_dir / "zygote.log")
        self.deployments: list[Deployment] = []
        # Deployments whose processes are still shutting down (see Deployment.stop).
        self.stopping: list[threading.Thread] = []
        self.emulators = Emulators(
            log_dir,
            functions_host=self.router.host,
            pubsub_port=pubsub_port,
            firestore_port=firestore_port,
        )

    def start(self) -> None:
        compile_functions(REPO_ROOT)
        self.router.start()
        try:
            self.zygote.start()
            self.emulators.start()
        except BaseException:
            self.stop()
            raise
        # This process (tests, the CLI, `make run`) talks to the emulators through Google's own
        # clients, which read these variables.
        os.environ.update(self.emulators.env())

    def stop(self) -> None:
        """Stop every deployment still running, wait for those still stopping, then stop the
        emulators: nothing is left behind, whichever way the caller ends."""
        while self.deployments:
            self.deployments.pop().stop()
        while self.stopping:
            self.stopping.pop().join()
        self.emulators.stop()
        self.zygote.stop()
        self.router.stop()

    @contextlib.contextmanager
    def running(self) -> Iterator[LocalCloud]:
        self.start()
        try:
            yield self
        finally:
            self.stop()

    def deploy(self, project: str, **kwargs: Any) -> Deployment:
        deployment = Deployment(self, project, **kwargs)
        self.deployments.append(deployment)
        try:
            deployment.start()
        except BaseException:
            deployment.stop()
            raise
        return deployment


@dataclass(frozen=True)
class FunctionUsage:
    invocations: int
    busy_seconds: float  # time with a request in flight, as Cloud Run bills it
    wire: Usage


@dataclass(eq=False)
class Deployment:
    cloud: LocalCloud
    project: str
    topology_overrides: dict[str, Any] = field(default_factory=dict)
    # The ai provider's server's flags; the other providers', by provider name.
    provider_args: list[str] = field(default_factory=list)
    provider_server_args: dict[str, list[str]] = field(default_factory=dict)
    graph_args: list[str] = field(default_factory=list)
    sheets_args: list[str] = field(default_factory=list)
    ports: dict[str, int] = field(default_factory=dict)
    functions: dict[str, FunctionProcess] = field(default_factory=dict)
    # Each function reaches the emulators through its own wire meter (see `usage`).
    metered: bool = False
    meters: dict[str, WireMeter] = field(default_factory=dict)
    _servers: dict[str, Process] = field(default_factory=dict)
    _relay: Process | None = None

    def __post_init__(self) -> None:
        raw = yaml.safe_load(REPO_TOPOLOGY.read_text())
        self.topology: Topology = parse_topology(
            yaml.safe_dump(merge(raw, self.topology_overrides))
        )
        self.dir = self.cloud.log_dir / self.project
        self.dir.mkdir(parents=True, exist_ok=True)
        self.topology_path = self.dir / "topology.yaml"
        self.topology_path.write_text(yaml.safe_dump(self.topology.model_dump(mode="json")))
        self.scheduler = Scheduler(self.project, self.topology.schedules)
        # Filled in by start(): each server binds port 0 (or the port asked for) and reports the
        # port it got, so no other process can take it between choosing and binding.
        self.server_ports: dict[str, int] = {}
        # WhatsApp secrets of this deployment: Meta's app secret, the verify token, the token
        # Sluice sends with; local and fresh each time, written to local.json (readable by its
        # owner only) for tools. Secrets reach every process through its environment, never its
        # command line, which any user of the machine can read (`ps`).
        self.ai_api_key = f"sk-local-{secrets.token_urlsafe(18)}"
        # Every provider a kind's steps call has a local server of its own (the ai provider's is
        # `provider`), with its limits, latency and failures, and a key of its own.
        self.provider_keys = {name: f"sk-local-{secrets.token_urlsafe(18)}"
                              for name in self.endpoint_providers}  # fmt: skip
        self.provider_keys["ai"] = self.ai_api_key
        self.whatsapp = {
            "app_secret": secrets.token_hex(16),
            "verify_token": secrets.token_urlsafe(12),
            "access_token": secrets.token_urlsafe(24),
            "phone_number_id": "100000000000001",
            "display_phone_number": "15550000001",
        }

    @property
    def endpoint_providers(self) -> list[str]:
        return [name for name, p in self.topology.providers.items() if p.endpoint]

    @staticmethod
    def server_of(provider: str) -> str:
        """The name of a provider's local server (the ai provider's is `provider`)."""
        return "provider" if provider == "ai" else provider

    def runs_jobs(self, provider: str) -> bool:
        """Whether `provider` runs remote jobs: its local server is the job server."""
        return self.topology.poll_seconds(provider) is not None

    @property
    def provider_url(self) -> str:
        return f"http://127.0.0.1:{self.server_ports['provider']}"

    def provider_server_url(self, provider: str) -> str:
        """Where the local server of `provider` listens."""
        return f"http://127.0.0.1:{self.server_ports[self.server_of(provider)]}"

    @property
    def graph_url(self) -> str:
        return f"http://127.0.0.1:{self.server_ports['graph']}"

    @property
    def sheets_url(self) -> str:
        return f"http://127.0.0.1:{self.server_ports['sheets']}"

    def url(self, function: str) -> str:
        return self.functions[function].url

    def settings(self) -> dict[str, str]:
        """This deployment's value of each setting a function may need (`needs` in the topology):
        in the cloud, Terraform's plain settings and Secret Manager's secrets; here, local."""
        endpoints: dict[str, str] = {}
        for name in self.endpoint_providers:
            endpoint = self.topology.providers[name].endpoint
            assert endpoint is not None
            endpoints[endpoint.url] = self.provider_server_url(name)
            if endpoint.api_key:
                endpoints[endpoint.api_key] = self.provider_keys[name]
        return {
            **endpoints,
            "status_api_url": self.url("status-api"),
            "whatsapp_graph_url": self.graph_url,
            # Named only: the local Sheets server takes no credentials.
            "sheets_service_account": f"sluice-sheets@{self.project}.{SERVICE_ACCOUNTS}",
            "whatsapp_app_secret": self.whatsapp["app_secret"],
            "whatsapp_verify_token": self.whatsapp["verify_token"],
            "whatsapp_access_token": self.whatsapp["access_token"],
        }

    def stand_ins(self) -> dict[str, str]:
        """Where the outside services are. In the cloud a function finds them at their real
        addresses, the settings' defaults, which no `needs` lists; here they are the local
        servers, and every function is told so, as every function there can reach the real ones."""
        return {
            "SLUICE_WHATSAPP_GRAPH_URL": self.graph_url,
            "SLUICE_SHEETS_ENDPOINT": self.sheets_url,
            # The local CRM receivers listen on 127.0.0.1 over http.
            "SLUICE_ALLOW_LOOPBACK_CALLBACKS": "true",
        }

    def function_env(self, function: Function) -> dict[str, str]:
        """A function's environment, as Terraform gives it (terraform/functions.tf): the project
        and SLUICE_<NAME> for each setting its `needs` or `uses` list, no other; plus the
        emulators, the deployment's topology and the stand-ins. A setting a function reads but
        does not list is missing here as it would be in the cloud, so it fails locally first."""
        values = self.settings()
        return {
            **self.cloud.emulators.env(),
            "GOOGLE_CLOUD_PROJECT": self.project,
            "SLUICE_TOPOLOGY": str(self.topology_path),
            **self.stand_ins(),
            **{env_name(need): values[need] for need in function.needs if need in values},
            **{env_name(use): values[use] for use in function.uses if use in values},
        }

    # -- lifecycle ------------------------------------------------------------------------------

    def start(self) -> None:
        servers = {
            "graph": ("graph_server", self.graph_args),
            "sheets": ("sheets_server", self.sheets_args),
        }
        secrets_of = {"graph": {GRAPH_ACCESS_TOKEN_ENV: self.whatsapp["access_token"]}}
        for provider in self.endpoint_providers:
            server = self.server_of(provider)
            args = self.provider_args if provider == "ai" else []
            args = [*args, *self.provider_server_args.get(provider, [])]
            jobs = self.runs_jobs(provider)
            servers[server] = ("job_server" if jobs else "provider_server", args)
            key_env = JOB_API_KEY_ENV if jobs else PROVIDER_API_KEY_ENV
            secrets_of[server] = {key_env: self.provider_keys[provider]}
        logs = {name: self.dir / f"{name}.log" for name in servers}
        offsets = {name: log.stat().st_size if log.exists() else 0 for name, log in logs.items()}
        for name, (module, args) in servers.items():
            self._servers[name] = spawn_module(
                f"localcloud.{module}", ["--port", str(self.ports.get(name, 0)), *args],
                log_path=logs[name], env=secrets_of.get(name), zygote=self.cloud.zygote,
            )  # fmt: skip
        # The functions' environment holds the servers' URLs: learn the ports first.
        for name, proc in self._servers.items():
            self.server_ports[name] = listening_port(
                logs[name], offset=offsets[name], timeout=30, what=f"{name} server", proc=proc
            )
        for name, function in self.topology.functions.items():
            if self.metered:
                emulators = self.cloud.emulators
                self.meters[name] = WireMeter(emulators.firestore_host, emulators.pubsub_host)
                self.meters[name].start()
            self.functions[name] = FunctionProcess(
                name,
                function,
                source=SERVICES / name / "main.py",
                env={},
                log_dir=self.dir,
                port=self.ports.get(name, 0),
                zygote=self.cloud.zygote,
            )
        # Each function's environment holds the others' URLs (status-api's): learn them first.
        for name, fn in self.functions.items():
            fn.env.update(self.function_env(fn.function))
            if name in self.meters:
                fn.env.update(self.meters[name].env())
            fn.start()
        self.create_topics()
        for fn in self.functions.values():
            fn.wait_ready()
        self.create_subscriptions()
        self.start_push_relay()
        self.register_triggers()
        self.scheduler.start()

    def stop(self, *, wait: bool = True) -> None:
        """Nothing reaches the deployment once this returns: its triggers, schedules and
        subscriptions are gone. Its processes are then stopped, each in its own grace period;
        with `wait=False` they finish stopping in the background (LocalCloud.stop waits for
        them), so that a test's teardown does not hold up the next test by seconds."""
        if self in self.cloud.deployments:
            self.cloud.deployments.remove(self)
        self.cloud.router.unroute(self.project)
        self.scheduler.stop()
        self.stop_push_relay()
        self.delete_subscriptions()
        if wait:
            self._stop_processes()
            return
        stopping = threading.Thread(target=self._stop_processes, name=f"stop-{self.project}")
        stopping.start()
        self.cloud.stopping.append(stopping)

    def _stop_processes(self) -> None:
        with ThreadPoolExecutor() as pool:  # each waits for its own grace period: in parallel
            list(pool.map(lambda fn: fn.stop(), self.functions.values()))
            for proc in self._servers.values():
                pool.submit(stop, proc)
        for meter in self.meters.values():
            meter.stop()

    def usage(self) -> dict[str, FunctionUsage]:
        """What each function used so far, counted on the wire: its invocations and billed time
        at its front end, and (when `metered`) its Firestore and Pub/Sub calls at its meter."""
        return {
            name: FunctionUsage(
                fn.frontend.requests,
                fn.frontend.busy_seconds,
                self.meters[name].usage() if name in self.meters else Usage(),
            )
            for name, fn in self.functions.items()
        }

    # -- wiring ---------------------------------------------------------------------------------

    def create_topics(self) -> None:
        publisher = pubsub_v1.PublisherClient()
        for topic in self.topology.all_topics:
            with contextlib.suppress(AlreadyExists):
                publisher.create_topic(name=publisher.topic_path(self.project, topic))

    def push_endpoint(self, function: str, topic: str) -> str:
        # As Terraform declares it. The processor dispatches on the push body's subscription;
        # the path only makes the topic readable in logs.
        return f"{self.url(function)}/projects/{self.project}/topics/{topic}"

    def create_subscriptions(self) -> None:
        """Each subscription as topology.yaml declares it (Terraform's push subscriptions), but
        pulled: the push relay delivers its messages (see localcloud.push_relay)."""
        subscriber = pubsub_v1.SubscriberClient()
        publisher = pubsub_v1.PublisherClient()
        for name, sub in self.topology.subscriptions.items():
            request: dict[str, Any] = {
                "name": subscriber.subscription_path(self.project, name),
                "topic": publisher.topic_path(self.project, sub.topic),
                "ack_deadline_seconds": sub.ack_deadline_seconds,
                "retry_policy": RetryPolicy(
                    minimum_backoff=Duration(seconds=sub.retry.minimum_backoff_seconds),
                    maximum_backoff=Duration(seconds=sub.retry.maximum_backoff_seconds),
                ),
                "enable_message_ordering": sub.ordering,
                "dead_letter_policy": DeadLetterPolicy(
                    dead_letter_topic=publisher.topic_path(
                        self.project, self.topology.dead_letter_of(name)
                    ),
                    max_delivery_attempts=sub.max_delivery_attempts,
                ),
            }
            with contextlib.suppress(AlreadyExists):
                subscriber.create_subscription(request=request)
        parked = self.topology.parking_lot
        with contextlib.suppress(AlreadyExists):
            subscriber.create_subscription(
                name=subscriber.subscription_path(self.project, parked.subscription),
                topic=publisher.topic_path(self.project, parked.topic),
            )
        subscriber.close()

    def start_push_relay(self) -> None:
        routes = [
            {
                "subscription": f"projects/{self.project}/subscriptions/{name}",
                "endpoint": self.push_endpoint(sub.push_to, sub.topic),
                "in_flight": self.functions[sub.push_to].serves_at_once,
                "ack_deadline_seconds": sub.ack_deadline_seconds,
                "dead_letter": True,  # every subscription has one (the parking lot at least)
                "minimum_backoff_seconds": sub.retry.minimum_backoff_seconds,
                "maximum_backoff_seconds": sub.retry.maximum_backoff_seconds,
            }
            for name, sub in self.topology.subscriptions.items()
        ]
        config = self.dir / "push-relay.json"
        config.write_text(json.dumps(routes, indent=2))
        self._relay = spawn_module(
            "localcloud.push_relay", [str(config)], log_path=self.dir / "push-relay.log",
            env=self.cloud.emulators.env(), zygote=self.cloud.zygote,
        )  # fmt: skip

    @contextlib.contextmanager
    def push_paused(self) -> Iterator[None]:
        """No push delivery while the block runs (the deliveries under way have ended when it
        starts, and nothing is held back): what the broker holds can be pulled and counted, as
        with push switched off."""
        self.stop_push_relay()
        try:
            yield
        finally:
            self.start_push_relay()

    def stop_push_relay(self) -> None:
        relay, self._relay = self._relay, None
        if relay is not None:
            # SIGTERM lets the deliveries under way end (within their ack deadline).
            longest = max(s.ack_deadline_seconds for s in self.topology.subscriptions.values())
            stop(relay, grace=longest + 5)

    def delete_subscriptions(self) -> None:
        """Tear the project's subscriptions down with its functions (after its relay): the
        emulator keeps what nobody acknowledges, and a finished test's backlog costs every
        other project its share of the emulator."""
        subscriber = pubsub_v1.SubscriberClient()
        try:
            for name in [*self.topology.subscriptions, self.topology.parking_lot.subscription]:
                with contextlib.suppress(GoogleAPICallError):
                    subscriber.delete_subscription(
                        subscription=subscriber.subscription_path(self.project, name), timeout=10
                    )
        finally:
            subscriber.close()

    def register_triggers(self) -> None:
        firestore = f"http://{self.cloud.emulators.firestore_host}"
        for trigger_id, trigger in self.topology.firestore_triggers.items():
            self.cloud.router.route(
                self.project, trigger_id, self.url(trigger.function),
                max_backoff=self.topology.exports.redelivery_seconds,
            )  # fmt: skip
            response = httpx.post(
                f"{firestore}/emulator/v1/projects/{self.project}/eventarcTrigger",
                params={"eventarcTriggerId": trigger_id},
                json={
                    "eventType": trigger.event_type,
                    "database": "(default)",
                    "namespace": "(default)",
                    "document": {"value": trigger.document, "matchType": "PATH_PATTERN"},
                },
                timeout=60,  # a first registration on a loaded machine takes seconds
            )
            response.raise_for_status()

    def describe(self) -> dict[str, Any]:
        """What is running, for `.sluice/local.json`, scripts and tools."""
        return {
            "project": self.project,
            "functions": {name: fn.url for name, fn in self.functions.items()},
            "emulators": self.cloud.emulators.env(),
            "trigger_router": f"http://{self.cloud.router.host}",
            "servers": {
                "ai_provider": self.provider_url,
                **{
                    f"provider:{name}": self.provider_server_url(name)
                    for name in self.endpoint_providers
                },
                "whatsapp_graph": self.graph_url,
                # Read what an export wrote with the real client: SheetsAPI(endpoint=this URL).
                "sheets": self.sheets_url,
            },
            "whatsapp": self.whatsapp,
            "logs": str(self.dir),
        }


def write_local_json(path: Path, info: dict[str, Any]) -> None:
    """It holds the deployment's secrets and the demo tenant's key: readable by its owner only,
    from the moment it exists (a file left by an older run is made so too)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(json.dumps(info, indent=2) + "\n")
