"""One base for the local servers that stand in for outside services (an AI provider, the WhatsApp
Cloud API, the Google Sheets API): each keeps only its wire format and its limits.

What they share lives here:

- the behaviour: a validated, immutable pydantic model (a `BaseBehaviour`), read and changed at
  runtime through `GET`/`POST /_sluice/config` (`RuntimeConfig`, which also holds the random
  generator its `seed` seeds);
- the counters and the request log (`Counters`): requests, answers by status, what the server
  counts besides, and its last entries, zeroed by `POST /_sluice/reset`;
- the app (`local_app`): those routes, `GET /_sluice/stats`, the log's route, `/healthz`, and an
  HTML status page at `/` (the log, newest first, then the counters and the behaviour);
- the command line (`LocalServer.main`): one flag per field of the behaviour and of the server's
  start-up options (`ServeOptions` and what a server adds), built from the models, so that a new
  field is a new flag; then serving until SIGTERM or SIGINT (`serve`).
"""

from __future__ import annotations

import argparse
import html
import json
import logging
import math
import os
import random
import signal
import threading
import time
import types
import typing
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from types import FrameType
from typing import Any, ClassVar, Generic, Protocol, TypeVar

import flask
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic.fields import FieldInfo
from werkzeug.exceptions import HTTPException
from werkzeug.serving import make_server

Clock = Callable[[], float]
LOG_SIZE = 10_000  # entries kept in a server's log
PAGE_ENTRIES = 50  # of them shown on its page
B = TypeVar("B", bound="BaseBehaviour")
C = TypeVar("C", bound="RuntimeConfig[Any]")
E = TypeVar("E", bound="Entry")
S = TypeVar("S", bound="ServeOptions")
T = TypeVar("T")


# --- the behaviour -------------------------------------------------------------------------------


def from_env(variable: str) -> dict[str, Any]:
    """For a field's `json_schema_extra`: on the command line its default is read from this
    environment variable. For secrets: a command line is readable by anyone on the machine."""
    return {"env": variable}


class BaseBehaviour(BaseModel):
    """How a local server behaves. Immutable: a change swaps in a whole new, validated value."""

    # Strict, so that a runtime `POST /_sluice/config` with {"failure_rate": "0.5"} or a bool
    # for an int is refused rather than silently coerced.
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)

    seed: int | None = Field(
        default=None, description="seed the random choices: the same seed, the same sequence"
    )


class RuntimeConfig(Generic[B]):
    """A server's current behaviour (`model`, validated from `fields`), which a change swaps whole,
    plus the random generator seeded by its `seed`; safe to share between threads.

    The generator lives here so that setting `seed` (at start or at runtime) restarts the
    sequence: with one client thread, the same seed gives the same failures in the same order.
    """

    model: ClassVar[type[BaseBehaviour]]

    def __init__(self, **fields: Any) -> None:
        self._lock = threading.Lock()
        self._behaviour: B = self._validate(fields)
        self._rng = random.Random(self._behaviour.seed)

    def _validate(self, fields: Mapping[str, Any]) -> B:
        return typing.cast(B, self.model.model_validate(dict(fields)))

    def get(self) -> B:
        with self._lock:
            return self._behaviour

    def as_dict(self) -> dict[str, Any]:
        return self.get().model_dump()

    def update(self, fields: Mapping[str, Any]) -> B:
        """Change any subset of the fields; raises `ValidationError` and changes nothing if bad."""
        with self._lock:
            self._behaviour = self._validate({**self._behaviour.model_dump(), **fields})
            if "seed" in fields:
                self._rng = random.Random(self._behaviour.seed)
            return self._behaviour

    def _draw(self, choose: Callable[[B, random.Random], T]) -> tuple[B, T]:
        """The behaviour and the random choices `choose` makes with it, taken under the lock."""
        with self._lock:
            return self._behaviour, choose(self._behaviour, self._rng)


def pause(stopping: threading.Event, ms: float) -> None:
    """Sleep `ms` milliseconds, cut short when the server is stopping."""
    if ms > 0:
        stopping.wait(ms / 1000)


# --- what a server saw ---------------------------------------------------------------------------


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


class Entry(Protocol):
    """One entry of a server's log."""

    def as_dict(self) -> dict[str, Any]: ...


@dataclass
class Call:
    """A request in a server's log: when it came, when and how it was answered."""

    generation: int  # of the counters it arrived in: a reset starts a new one
    at: float  # epoch seconds
    ended: float | None = None
    status: int | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"at": self.at, "ended": self.ended, "status": self.status}


def by_key(counts: Mapping[Any, int]) -> dict[str, int]:
    return {str(k): v for k, v in sorted(counts.items())}


class Counters(Generic[E]):
    """What a server saw: its requests, their answers by HTTP status, what else it counts, and its
    last `log_size` log entries (of type E). One lock guards all of it, so every snapshot is
    consistent; `reset()` zeroes it, and a request that arrived before a reset is not counted
    when it is answered after it.

    A server extends `_zero` (what it counts besides, zeroed under the lock) and `_counted` (that,
    for the snapshot), and counts each request with `_arrived` and `_answered`, under the lock.
    """

    def __init__(self, clock: Clock = time.monotonic, *, log_size: int = LOG_SIZE) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._log_size = log_size
        self._generation = 0
        self._zero()

    def _zero(self) -> None:
        self._requests = 0
        self._by_status: dict[int, int] = {}
        self._log: deque[E] = deque(maxlen=self._log_size)

    def _counted(self) -> dict[str, Any]:
        return {}

    def reset(self) -> None:
        with self._lock:
            self._generation += 1
            self._zero()

    def _arrived(self) -> int:
        """Count a request; the generation to answer it in."""
        self._requests += 1
        return self._generation

    def _answered(self, generation: int, status: int) -> bool:
        """Count an answer, unless its request came before a reset; whether it was counted."""
        if generation != self._generation:
            return False
        self._by_status[status] = self._by_status.get(status, 0) + 1
        return True

    def _end(self, call: Call, status: int) -> bool:
        """A logged call's answer: recorded on the call, and counted as `_answered` does."""
        call.ended = time.time()
        call.status = status
        return self._answered(call.generation, status)

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return {
                "requests": self._requests,
                "by_status": by_key(self._by_status),
                **self._counted(),
            }

    def entries(self, limit: int, **match: str | None) -> list[dict[str, Any]]:
        """The last `limit` log entries, oldest first; with `match`, only the entries whose
        attributes equal the values given (a None value matches every entry)."""
        wanted = {k: v for k, v in match.items() if v is not None}
        with self._lock:
            chosen = [e for e in self._log if all(getattr(e, k) == v for k, v in wanted.items())]
            return [e.as_dict() for e in chosen[max(0, len(chosen) - limit) :]]


# --- the app -------------------------------------------------------------------------------------


def json_object(raw: bytes, error: Callable[[str], Exception], not_json: str) -> dict[str, Any]:
    """A request body that must be one JSON object, or `error` with the provider's own wording."""
    try:
        body = json.loads(raw)
    except ValueError as e:  # also covers bytes that are not UTF-8
        raise error(f"{not_json}: {e}") from e
    if not isinstance(body, dict):
        raise error("The request body must be a JSON object.")
    return body


def json_response(
    body: Any, status: int = 200, headers: dict[str, str] | None = None
) -> flask.Response:
    return flask.Response(
        json.dumps(body), status=status, headers=headers, mimetype="application/json"
    )


def parse_limit(raw: str | None, default: int) -> int | None:
    """A `?limit=` query parameter: a non-negative integer, `default` if absent, None if bad."""
    if raw is None:
        return default
    try:
        limit = int(raw)
    except ValueError:
        return None
    return limit if limit >= 0 else None


@dataclass(frozen=True)
class Column:
    """A column of the log's table on the status page: its heading and an entry's text in it."""

    heading: str
    text: Callable[[dict[str, Any]], str]
    css: str | None = None


@dataclass(frozen=True)
class LogView:
    """A server's log: `GET path?limit=N` (and `&name=value` for each of `filters`, the entries'
    attributes), and its table on the status page."""

    path: str
    what: str  # "requests", "messages sent"
    columns: Sequence[Column]
    filters: Sequence[str] = ()


def when(t: float | None) -> str:
    if t is None:
        return "-"
    return time.strftime("%H:%M:%S", time.localtime(t)) + f".{int(t % 1 * 1000):03d}"


def calls_log(what: Column) -> LogView:
    """The log of a server that logs each call (a `Call`) as it arrives: `GET /_sluice/requests`,
    a table of when each came and ended, its status, and `what` it was."""
    return LogView(
        "/_sluice/requests",
        "requests",
        [
            Column("at", lambda c: when(c["at"])),
            Column("ended", lambda c: when(c["ended"])),
            Column("status", lambda c: "in flight" if c["status"] is None else str(c["status"])),
            what,
        ],
    )


def _key_values(rows: Mapping[str, Any]) -> str:
    cells = "".join(
        f"<tr><th>{html.escape(k)}</th><td>{html.escape(json.dumps(v))}</td></tr>"
        for k, v in rows.items()
    )
    return f"<table>{cells}</table>"


def status_page(
    title: str,
    log: LogView,
    entries: Iterable[dict[str, Any]],
    stats: Mapping[str, Any],
    config: Mapping[str, Any],
) -> str:
    """The page at `/`: the log, newest first, then the counters and the behaviour; it reloads
    itself every 2 s. Every value is escaped."""
    shown = list(entries)
    heads = "".join(f"<th>{html.escape(c.heading)}</th>" for c in log.columns)

    def cell(column: Column, entry: dict[str, Any]) -> str:
        css = f' class="{column.css}"' if column.css else ""
        return f"<td{css}>{html.escape(column.text(entry))}</td>"

    rows = "".join(
        "<tr>" + "".join(cell(c, entry) for c in log.columns) + "</tr>\n"
        for entry in reversed(shown)
    )
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><meta http-equiv="refresh" content="2">
<title>{html.escape(title)}</title>
<style>body{{font-family:sans-serif}} td,th{{padding:2px 8px;text-align:left;vertical-align:top}}
.text{{white-space:pre-wrap}}</style>
</head><body>
<h1>{html.escape(title)}</h1>
<h2>Last {len(shown)} {html.escape(log.what)}, newest first</h2>
<table><tr>{heads}</tr>
{rows}</table>
<h2>Stats</h2>{_key_values(stats)}
<h2>Config</h2>{_key_values(config)}
</body></html>
"""


def local_app(
    import_name: str,
    *,
    title: str,
    config: RuntimeConfig[Any],
    counters: Counters[Any],
    log: LogView,
    bad_request: Callable[[str], flask.Response],
    http_error: Callable[[HTTPException], flask.Response],
) -> flask.Flask:
    """A Flask app with the routes every local server has: read and change its behaviour, read
    and zero its counters, read its log, a health check and the status page. `bad_request` and
    `http_error` (404s, 405s, ...) answer in the imitated service's error format, since its
    clients parse every error body. The server adds its own routes to the app."""
    app = flask.Flask(import_name)
    app.extensions["sluice_local_server"] = {"config": config, "counters": counters}
    app.register_error_handler(HTTPException, http_error)

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
        return json_response(counters.snapshot())

    @app.post("/_sluice/reset")
    def reset() -> flask.Response:
        counters.reset()
        return json_response(counters.snapshot())

    @app.get(log.path)
    def get_log() -> flask.Response:
        args = flask.request.args
        limit = parse_limit(args.get("limit"), 100)
        if limit is None:
            return bad_request("'limit' must be a non-negative integer.")
        return json_response(counters.entries(limit, **{f: args.get(f) for f in log.filters}))

    @app.get("/healthz")
    def healthz() -> flask.Response:
        return flask.Response("ok", mimetype="text/plain")

    @app.get("/")
    def index() -> flask.Response:
        page = status_page(
            title, log, counters.entries(PAGE_ENTRIES), counters.snapshot(), config.as_dict()
        )
        return flask.Response(page, mimetype="text/html")

    return app


# --- serving -------------------------------------------------------------------------------------


class _Deferred:
    """A WSGI app that is made once the server is bound, so that it can know its own URL."""

    app: flask.Flask | None = None

    def __call__(self, environ: Any, start_response: Any) -> Any:
        assert self.app is not None
        return self.app(environ, start_response)


def serve(
    make_app: Callable[[threading.Event, str], flask.Flask],
    host: str,
    port: int,
    *,
    name: str,
    log_requests: bool = False,
) -> int:
    """Serve `make_app(stopping, url)` on `host:port` (0: a free port) until SIGTERM or SIGINT.

    `url` is where it is bound. Prints `listening on http://HOST:PORT` once bound. `stopping` is
    set on the way out, so that the app can cut short the sleeps of calls still in flight.
    Returns the exit status, 0.
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
        deferred = _Deferred()
        server = make_server(host, port, deferred, threaded=True)
        shown = f"[{host}]" if ":" in host else host
        url = f"http://{shown}:{server.server_port}"
        deferred.app = make_app(stopping, url)
        print(f"listening on {url}", flush=True)

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


# --- the command line ----------------------------------------------------------------------------


class ServeOptions(BaseModel):
    """What every local server is started with, besides its behaviour."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    host: str = Field(default="127.0.0.1", description="the address to listen on")
    port: int = Field(default=0, ge=0, le=65535, description="the port; 0 picks a free one")
    log_requests: bool = Field(default=False, description="log each request to stderr")


NONE_WORDS = frozenset({"none", "null"})


def _scalar(name: str, annotation: Any) -> tuple[type, bool]:
    """A field's type, one of bool, int, float and str, and whether it may be None."""
    optional = False
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        optional = len(args) < len(typing.get_args(annotation))
        annotation = args[0] if len(args) == 1 else annotation
    if annotation not in (bool, int, float, str):
        raise TypeError(f"{name}: a flag takes bool, int, float or str, not {annotation!r}")
    return annotation, optional


def _converter(kind: type, optional: bool) -> Callable[[str], Any]:
    def convert(text: str) -> Any:
        if optional and text.lower() in NONE_WORDS:
            return None
        return kind(text)

    convert.__name__ = kind.__name__  # argparse says "invalid int value: 'x'"
    return convert


def _add_flag(parser: argparse.ArgumentParser, name: str, field: FieldInfo) -> None:
    flag = "--" + name.replace("_", "-")
    kind, optional = _scalar(name, field.annotation)
    extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
    env = extra.get("env")
    default = field.get_default(call_default_factory=True)
    help_ = field.description or ""
    if isinstance(env, str):
        shown = f"${env}" + ("" if default is None else f", else {default}")
        help_ += f" (default: {shown}; prefer the variable, which `ps` does not show)"
        default = os.environ.get(env) or default
    elif kind is not bool:
        shown = "none" if default is None else f"{default}{', or none' if optional else ''}"
        help_ += f" (default: {shown})"
    if kind is bool:
        parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=default,
                            help=help_)  # fmt: skip
    else:
        parser.add_argument(flag, type=_converter(kind, optional), default=default,
                            metavar=kind.__name__.upper(), help=help_)  # fmt: skip


def command_line(
    prog: str, description: str, models: Sequence[type[BaseModel]]
) -> argparse.ArgumentParser:
    """A parser with one flag per field of `models` (`seed_s` → `--seed-s`), typed as the field
    is, defaulting to its default, with its description as help."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    for model in models:
        # A server's own fields first, then those every behaviour has (the seed).
        names = sorted(model.model_fields, key=lambda n: n in BaseBehaviour.model_fields)
        for name in names:
            _add_flag(parser, name, model.model_fields[name])
    return parser


@dataclass(frozen=True)
class LocalServer(Generic[C, S]):
    """A local server as a command: `python -m {module} --port 0 --<any behaviour field> ...`."""

    module: str
    description: str
    config: type[C]  # its `model` is the behaviour, which gives the flags
    options: type[S]  # ServeOptions, or a subclass with the server's own start-up options
    make_app: Callable[[C, S, threading.Event, str], flask.Flask]  # (..., stopping, url)

    @property
    def name(self) -> str:
        return self.module.rsplit(".", 1)[-1].replace("_", "-")

    def parser(self) -> argparse.ArgumentParser:
        return command_line(
            f"python -m {self.module}", self.description, [self.options, self.config.model]
        )

    def main(self, argv: Sequence[str] | None = None) -> int:
        parser = self.parser()
        args = vars(parser.parse_args(argv))
        try:
            options = self.options.model_validate({k: args[k] for k in self.options.model_fields})
            config = self.config(**{k: args[k] for k in self.config.model.model_fields})
        except ValidationError as e:
            parser.error(str(e))
        return serve(
            lambda stopping, url: self.make_app(config, options, stopping, url),
            options.host,
            options.port,
            name=self.name,
            log_requests=options.log_requests,
        )
