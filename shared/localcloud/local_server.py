"""What the local fake servers share: a sliding-window counter, JSON answers, and serving an app.

`provider_server` (a fake OpenAI-compatible provider) and `graph_server` (a fake WhatsApp Cloud
API) are both Flask apps that count what they see in sliding windows and run from the command line
until SIGTERM or SIGINT; the pieces for that live here, so both behave the same.
"""

from __future__ import annotations

import json
import logging
import math
import random
import signal
import threading
from collections import deque
from collections.abc import Callable, Mapping
from types import FrameType
from typing import Any, Generic, Protocol, TypeVar

import flask
from pydantic import BaseModel, ValidationError
from werkzeug.serving import make_server

Clock = Callable[[], float]
B = TypeVar("B", bound=BaseModel)
T = TypeVar("T")


class RuntimeConfig(Generic[B]):
    """A server's current behaviour, a validated immutable model that a change swaps whole, plus
    the random generator seeded by its `seed` field (if it has one); safe to share between threads.

    The generator lives here so that setting `seed` (at start or at runtime) restarts the
    sequence: with one client thread, the same seed gives the same failures in the same order.
    """

    def __init__(self, model: type[B], fields: Mapping[str, Any]) -> None:
        self._model = model
        self._lock = threading.Lock()
        self._behaviour = model.model_validate(dict(fields))
        self._rng = random.Random(getattr(self._behaviour, "seed", None))

    def get(self) -> B:
        with self._lock:
            return self._behaviour

    def as_dict(self) -> dict[str, Any]:
        return self.get().model_dump()

    def update(self, fields: Mapping[str, Any]) -> B:
        """Change any subset of the fields; raises `ValidationError` and changes nothing if bad."""
        with self._lock:
            merged = {**self._behaviour.model_dump(), **fields}
            self._behaviour = self._model.model_validate(merged)
            if "seed" in fields:
                self._rng = random.Random(getattr(self._behaviour, "seed", None))
            return self._behaviour

    def _draw(self, choose: Callable[[B, random.Random], T]) -> tuple[B, T]:
        """The behaviour and the random choices `choose` makes with it, taken under the lock."""
        with self._lock:
            return self._behaviour, choose(self._behaviour, self._rng)


class SlidingWindow:
    """The times of the events within the last `width_s` seconds of a monotonic clock.

    Not thread-safe: its owner guards it with its own lock, together with what else it counts.
    """

    def __init__(self, width_s: float) -> None:
        self.width_s = width_s
        self._times: deque[float] = deque()

    def expire(self, now: float) -> None:
        """Forget the events that are out of the window at `now`."""
        while self._times and self._times[0] <= now - self.width_s:
            self._times.popleft()

    def count(self, now: float) -> int:
        self.expire(now)
        return len(self._times)

    def add(self, now: float) -> int:
        """Count an event at `now`; the number of events in the window, this one included."""
        self.expire(now)
        self._times.append(now)
        return len(self._times)

    def retry_after(self, now: float) -> int:
        """Whole seconds, at least 1, until the oldest event leaves the window and frees a slot."""
        self.expire(now)
        wait = self._times[0] + self.width_s - now if self._times else self.width_s
        return max(1, math.ceil(wait))


def json_response(
    body: Any, status: int = 200, headers: dict[str, str] | None = None
) -> flask.Response:
    return flask.Response(
        json.dumps(body), status=status, headers=headers, mimetype="application/json"
    )


class Counters(Protocol):
    def snapshot(self) -> dict[str, Any]: ...

    def reset(self) -> None: ...


def add_control_routes(
    app: flask.Flask,
    config: RuntimeConfig[Any],
    stats: Counters,
    bad_request: Callable[[str], flask.Response],
) -> None:
    """The routes every local server has: read and change its behaviour, read and zero its
    counters, and a health check. `bad_request` answers in the imitated service's error format."""

    @app.get("/_sluice/config")
    def get_config() -> flask.Response:
        return json_response(config.as_dict())

    @app.post("/_sluice/config")
    def set_config() -> flask.Response:
        fields = flask.request.get_json(force=True, silent=True)
        if not isinstance(fields, dict):
            return bad_request("The body must be a JSON object of config fields.")
        try:
            behaviour = config.update(fields)
        except ValidationError as e:
            return bad_request(f"Invalid config: {e}")
        return json_response(behaviour.model_dump())

    @app.get("/_sluice/stats")
    def get_stats() -> flask.Response:
        return json_response(stats.snapshot())

    @app.post("/_sluice/reset")
    def reset() -> flask.Response:
        stats.reset()
        return json_response(stats.snapshot())

    @app.get("/healthz")
    def healthz() -> flask.Response:
        return flask.Response("ok", mimetype="text/plain")


def parse_limit(raw: str | None, default: int) -> int | None:
    """A `?limit=` query parameter: a non-negative integer, `default` if absent, None if bad."""
    if raw is None:
        return default
    try:
        limit = int(raw)
    except ValueError:
        return None
    return limit if limit >= 0 else None


def serve(
    make_app: Callable[[threading.Event], flask.Flask],
    host: str,
    port: int,
    *,
    name: str,
    log_requests: bool = False,
) -> int:
    """Serve `make_app(stopping)` on `host:port` (0: a free port) until SIGTERM or SIGINT.

    Prints `listening on http://HOST:PORT` once bound. `stopping` is set on the way out, so that
    the app can cut short the sleeps of calls still in flight. Returns the exit status, 0.
    """
    if not log_requests:
        # werkzeug logs every request at INFO to stderr; a load test would drown in it.
        logging.getLogger("werkzeug").setLevel(logging.WARNING)

    stopping = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stopping.set()

    # Handlers go in before the "listening" line: whoever reads it may signal us at once, and an
    # uncaught SIGTERM would end the process with 143 instead of 0.
    previous: dict[signal.Signals, Any] = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            previous[sig] = signal.signal(sig, on_signal)
    try:
        app = make_app(stopping)
        server = make_server(host, port, app, threaded=True)
        shown = f"[{host}]" if ":" in host else host
        print(f"listening on http://{shown}:{server.server_port}", flush=True)

        # Serve from a thread and wait here: signal handlers run in the main thread, and
        # `server.shutdown()` blocks until `serve_forever` returns, so the two cannot share it.
        serving = threading.Thread(target=server.serve_forever, name=name, daemon=True)
        serving.start()
        try:
            stopping.wait()
        finally:
            stopping.set()  # also ends the sleeps of calls still in flight
            server.shutdown()
            server.server_close()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0
