"""Eventarc for the local cloud: Firestore trigger deliveries, as production sends them.

The Firestore emulator posts each matching change to `--functions_emulator`, at
`/functions/projects/{project}/triggers/{trigger}`, as a binary CloudEvent whose body is the
*base64 text* of the DocumentEventData protobuf. In the cloud, Eventarc posts the raw protobuf. This
router takes the emulator's post, answers it at once, and delivers the production form to the
trigger's function, retrying with backoff until the function answers 2xx, as Eventarc does for a
trigger with retries enabled: at least once, in no particular order, each redelivery carrying
the event's CloudEvent id, one attempt at a time.
"""

from __future__ import annotations

import base64
import binascii
import logging
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler

import httpx

from localcloud.processes import BackgroundServer

log = logging.getLogger(__name__)

FIRESTORE_SOURCE = "//firestore.googleapis.com/projects/{project}/databases/(default)"


@dataclass(frozen=True)
class Route:
    function_url: str
    # The longest wait between two attempts (the topology's exports.redelivery_seconds).
    max_backoff: float


class TriggerRouter(BackgroundServer):
    def __init__(self, *, port: int = 0, max_attempts: int = 30) -> None:
        self.max_attempts = max_attempts
        self._routes: dict[tuple[str, str], Route] = {}
        self._lock = threading.Lock()
        self.stats: Counter[str] = Counter()
        self._pool = ThreadPoolExecutor(max_workers=32, thread_name_prefix="eventarc")
        self._http = httpx.Client(timeout=httpx.Timeout(600.0, connect=2.0))
        self._stopping = threading.Event()
        super().__init__(self._handler(), port=port)

    def stop(self) -> None:
        self._stopping.set()
        super().stop()
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._http.close()

    def route(self, project: str, trigger: str, function_url: str, *, max_backoff: float) -> None:
        with self._lock:
            self._routes[(project, trigger)] = Route(function_url, max_backoff)

    def unroute(self, project: str) -> None:
        with self._lock:
            for key in [k for k in self._routes if k[0] == project]:
                del self._routes[key]

    def _bump(self, key: str) -> None:
        with self._lock:
            self.stats[key] += 1

    def count(self, project: str, trigger: str, outcome: str) -> int:
        return self.stats[f"{project}/{trigger}/{outcome}"]

    # -- delivery -------------------------------------------------------------------------------

    def _accept(self, path: str, headers: dict[str, str], body: bytes) -> int:
        parts = path.strip("/").split("/")
        # functions / projects / {project} / triggers / {trigger}
        if len(parts) != 5 or parts[0] != "functions" or parts[3] != "triggers":
            return 404
        project, trigger = parts[2], parts[4]
        with self._lock:
            route = self._routes.get((project, trigger))
        if route is None:
            self._bump(f"{project}/{trigger}/unrouted")
            return 200  # a trigger of a project that is gone: drop it, as Eventarc would
        try:
            payload = base64.b64decode(body, validate=True)
        except binascii.Error:
            payload = body  # already raw: pass it on unchanged
        ce = {k: v for k, v in headers.items() if k.lower().startswith("ce-")}
        # The emulator writes `projects/projects/{p}`; production says `projects/{p}`.
        ce["ce-source"] = FIRESTORE_SOURCE.format(project=project)
        ce["Content-Type"] = "application/protobuf"
        self._bump(f"{project}/{trigger}/received")
        self._pool.submit(self._deliver, project, trigger, route, ce, payload)
        return 200

    def _deliver(
        self, project: str, trigger: str, route: Route, headers: dict[str, str], payload: bytes
    ) -> None:
        delay = min(0.2, route.max_backoff)
        # One attempt at a time: the next is sent only once the last has ended (answered, or its
        # connection lost with the instance), so no event is ever being handled twice at once by
        # this router's doing; the function's leases rely on it (see sluice.handlers.exports).
        for _attempt in range(self.max_attempts):
            if self._stopping.is_set():
                return
            with self._lock:
                gone = (project, trigger) not in self._routes
            if gone:
                # Its project was torn down while the delivery waited: Eventarc stops with the
                # trigger, and retrying a dead function would hold a worker other projects need.
                self._bump(f"{project}/{trigger}/dropped")
                return
            try:
                status = self._http.post(
                    route.function_url, content=payload, headers=headers
                ).status_code
            except httpx.HTTPError:
                status = 0
            if 200 <= status < 300:
                self._bump(f"{project}/{trigger}/delivered")
                return
            self._bump(f"{project}/{trigger}/retried")
            self._stopping.wait(delay)
            delay = min(delay * 2, route.max_backoff)
        self._bump(f"{project}/{trigger}/abandoned")
        log.error(
            "trigger %s/%s: delivery abandoned after %d attempts",
            project,
            trigger,
            self.max_attempts,
        )

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        router = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                status = router._accept(self.path, dict(self.headers.items()), body)
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: object) -> None:
                pass

        return Handler


def wait_idle(router: TriggerRouter, project: str, trigger: str, timeout: float) -> None:
    """Wait until every received event of a trigger has been delivered (for tests and tools)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        received = router.count(project, trigger, "received")
        done = router.count(project, trigger, "delivered") + router.count(
            project, trigger, "abandoned"
        )
        if received and done >= received:
            return
        time.sleep(0.1)
    raise TimeoutError(f"trigger {trigger} still has undelivered events")
