"""A fake OpenAI-compatible chat completions provider, for local runs and tests of the batch job.

The batch processor calls a slow, rate-limited model provider. To try it without one, this server
answers `POST /v1/chat/completions` with a realistic `chat.completion` body whose content is
derived from the last user message ("echo: " + its first 200 characters), so a test can check
that every item got its own answer. Its bad days can be switched on: latency and jitter, random
500s, hangs, a marker that makes an item fail for good with a 400, a per-minute rate limit and a
concurrency limit, both answered with 429 and `Retry-After` like the real thing.

What it saw is counted, so a test can assert how the client behaved: `GET /_sluice/stats`
(`max_in_flight`, `max_per_minute`, ...), `GET /_sluice/requests`, `POST /_sluice/reset`; the
behaviour is read and changed at runtime with `GET`/`POST /_sluice/config`; `GET /` shows it all
in a browser.

Run it with `python -m localcloud.provider_server --port 0 --latency-ms 200`; it prints
`listening on http://HOST:PORT` once bound, and serves until SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import html
import itertools
import json
import math
import os
import random
import sys
import threading
import time
import uuid
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import flask
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from werkzeug.exceptions import HTTPException

from localcloud.local_server import (
    Clock,
    RuntimeConfig,
    SlidingWindow,
    add_control_routes,
    json_response,
    parse_limit,
    serve,
)

CONTENT_CHARS = 200  # how much of the user message is echoed back and kept in the request log
LOG_SIZE = 10_000
WINDOW_S = 60.0
ECHO_PREFIX = "echo: "
# The API key is read from here: a secret on a command line is readable by anyone on the machine.
API_KEY_ENV = "SLUICE_PROVIDER_API_KEY"
TRICKLE_BYTES = 16  # a trickled answer is sent in pieces of this size


class Behaviour(BaseModel):
    """How the provider behaves. Immutable: a change swaps in a whole new, validated value."""

    # Strict, so that a runtime `POST /_sluice/config` with {"failure_rate": "0.5"} or a bool
    # for an int is refused rather than silently coerced.
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)

    latency_ms: float = Field(default=0.0, ge=0)
    latency_jitter_ms: float = Field(default=0.0, ge=0)
    failure_rate: float = Field(default=0.0, ge=0, le=1)
    timeout_rate: float = Field(default=0.0, ge=0, le=1)
    timeout_sleep_s: float = Field(default=60.0, ge=0)
    # A successful answer sent in pieces of TRICKLE_BYTES this far apart: every read is quick,
    # the whole answer is slow (what a total deadline is for).
    trickle_ms: float = Field(default=0.0, ge=0)
    # An empty marker would match every message; refuse it, use null to switch it off.
    permanent_failure_marker: str | None = Field(default=None, min_length=1)
    rate_limit_per_minute: int | None = Field(default=None, ge=0)
    max_concurrent: int | None = Field(default=None, ge=0)
    seed: int | None = None


@dataclass(frozen=True)
class Draw:
    """The random choices for one admitted call."""

    jitter: float  # in [-1, 1], times latency_jitter_ms
    hang: bool
    fail: bool


class ProviderConfig(RuntimeConfig[Behaviour]):
    """The current `Behaviour` plus the random generator it seeds; safe to share between threads."""

    def __init__(self, **fields: Any) -> None:
        super().__init__(Behaviour, fields)

    def draw(self) -> tuple[Behaviour, Draw]:
        """The behaviour and the random choices for one call, taken together under the lock."""
        return self._draw(_choose)


def _choose(b: Behaviour, rng: random.Random) -> Draw:
    # Always draw all three, so a call's choices don't depend on which rates are zero.
    jitter = rng.uniform(-1.0, 1.0)
    hang = rng.random() < b.timeout_rate
    fail = rng.random() < b.failure_rate
    return Draw(jitter=jitter, hang=hang, fail=fail)


@dataclass
class _Call:
    at: float
    generation: int
    content: str = ""
    admitted: bool = False
    ended: float | None = None
    status: int | None = None
    # The client closed the connection before the whole answer was sent.
    client_closed: bool = False

    def as_dict(self) -> dict[str, Any]:
        return {"at": self.at, "ended": self.ended, "status": self.status,
                "content": self.content, "client_closed": self.client_closed}  # fmt: skip


@dataclass(frozen=True)
class Admission:
    ok: bool
    retry_after: int = 0
    reason: str = ""


class ProviderStats:
    """What the provider saw. One lock guards all of it, so every snapshot is consistent."""

    def __init__(self, clock: Clock = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._in_flight = 0
        self._generation = 0
        self._zero()

    def _zero(self) -> None:
        self._requests = 0
        self._by_status: dict[int, int] = {}
        self._rate_limited = 0
        # In-flight calls are real and will still end, so the gauge survives a reset; the peak
        # restarts from it.
        self._max_in_flight = self._in_flight
        self._max_per_minute = 0
        self._arrivals = SlidingWindow(WINDOW_S)  # monotonic arrival times
        self._accepted = SlidingWindow(WINDOW_S)  # the same, for calls the rate limiter let in
        self._log: deque[_Call] = deque(maxlen=LOG_SIZE)

    def reset(self) -> None:
        with self._lock:
            # Calls that arrived before the reset must not be counted when they end after it.
            self._generation += 1
            self._zero()

    def arrive(self) -> _Call:
        with self._lock:
            self._max_per_minute = max(self._max_per_minute, self._arrivals.add(self._clock()))
            self._requests += 1
            call = _Call(at=time.time(), generation=self._generation)
            self._log.append(call)
            return call

    def set_content(self, call: _Call, content: str) -> None:
        with self._lock:
            call.content = content

    def admit(self, call: _Call, behaviour: Behaviour) -> Admission:
        """Let the call in, or say why not. Check and count in one step, so no two calls can
        both take the last slot."""
        with self._lock:
            limit = behaviour.max_concurrent
            if limit is not None and self._in_flight >= limit:
                return Admission(False, 1, f"Too many concurrent requests: limit {limit}.")
            now = self._clock()
            per_minute = behaviour.rate_limit_per_minute
            used = self._accepted.count(now)
            if per_minute is not None and used >= per_minute:
                # Retry once the oldest accepted call leaves the window.
                retry_after = self._accepted.retry_after(now)
                reason = (
                    f"Rate limit reached for requests: limit {per_minute} per minute, "
                    f"used {used}, requested 1. "
                    f"Please try again in {retry_after}s."
                )
                return Admission(False, retry_after, reason)
            self._accepted.add(now)
            self._in_flight += 1
            self._max_in_flight = max(self._max_in_flight, self._in_flight)
            call.admitted = True
            return Admission(True)

    def finish(self, call: _Call, status: int, *, client_closed: bool = False) -> None:
        with self._lock:
            if call.admitted:
                self._in_flight -= 1
            call.ended = time.time()
            call.status = status
            call.client_closed = client_closed
            if call.generation != self._generation:
                return
            self._by_status[status] = self._by_status.get(status, 0) + 1
            if status == 429:
                self._rate_limited += 1

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return {
                "requests": self._requests,
                "by_status": {str(k): v for k, v in sorted(self._by_status.items())},
                "in_flight": self._in_flight,
                "max_in_flight": self._max_in_flight,
                "rate_limited": self._rate_limited,
                "max_per_minute": self._max_per_minute,
            }

    def recent(self, limit: int) -> list[dict[str, Any]]:
        """The last `limit` calls received, oldest first."""
        with self._lock:
            start = max(0, len(self._log) - limit)
            return [c.as_dict() for c in itertools.islice(self._log, start, None)]


# --- request bodies ------------------------------------------------------------------------------


class InvalidRequest(ValueError):
    pass


def _text(content: Any) -> str:
    """A message's text: a string, or the text parts of a list of content parts."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            if not isinstance(part, dict) or not isinstance(part.get("type"), str):
                raise InvalidRequest("Each content part must be an object with a 'type'.")
            if part["type"] == "text":
                if not isinstance(part.get("text"), str):
                    raise InvalidRequest("A text content part must have a string 'text'.")
                parts.append(part["text"])
        return "".join(parts)
    raise InvalidRequest("A message's 'content' must be a string, an array of parts or null.")


@dataclass(frozen=True)
class ChatRequest:
    model: str
    texts: list[str]  # every message's text, for the token counts
    last_user: str


def parse_chat_request(raw: bytes) -> ChatRequest:
    try:
        body = json.loads(raw)
    except ValueError as e:  # also covers bytes that are not UTF-8
        raise InvalidRequest(f"We could not parse the JSON body of your request: {e}") from e
    if not isinstance(body, dict):
        raise InvalidRequest("The request body must be a JSON object.")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise InvalidRequest("You must provide a model parameter.")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise InvalidRequest("'messages' must be a non-empty array.")
    texts: list[str] = []
    last_user = ""
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise InvalidRequest(f"messages[{i}] must be an object with a string 'role'.")
        text = _text(message.get("content"))
        texts.append(text)
        if message["role"] == "user":
            last_user = text
    return ChatRequest(model=model, texts=texts, last_user=last_user)


def _tokens(text: str) -> int:
    # Roughly what a real tokenizer gives for English: four characters a token.
    return max(1, math.ceil(len(text) / 4))


def completion_body(request: ChatRequest) -> dict[str, Any]:
    content = ECHO_PREFIX + request.last_user[:CONTENT_CHARS]
    prompt_tokens = sum(_tokens(t) for t in request.texts)
    completion_tokens = _tokens(content)
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": request.model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content, "refusal": None},
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
        "system_fingerprint": None,
    }


def _error(
    status: int,
    message: str,
    type_: str,
    code: str | None = None,
    headers: dict[str, str] | None = None,
) -> flask.Response:
    body = {"error": {"message": message, "type": type_, "param": None, "code": code}}
    return json_response(body, status, headers)


# --- the app -------------------------------------------------------------------------------------


def create_app(
    config: ProviderConfig | None = None,
    *,
    clock: Clock = time.monotonic,
    stopping: threading.Event | None = None,
    api_key: str | None = None,
) -> flask.Flask:
    """The provider as a Flask app. `clock` (monotonic seconds) drives the 60 s windows, so a test
    can move time; setting `stopping` cuts short every sleep, so a shutdown need not wait. With
    `api_key`, a call without `Authorization: Bearer <api_key>` is a 401, as OpenAI answers it."""
    config = config if config is not None else ProviderConfig()
    stats = ProviderStats(clock)
    stop = stopping if stopping is not None else threading.Event()
    app = flask.Flask(__name__)
    app.extensions["sluice_provider"] = {"config": config, "stats": stats}

    @app.errorhandler(HTTPException)
    def http_error(e: HTTPException) -> flask.Response:
        # 404s and 405s in OpenAI's error format too, since the client parses every error body.
        return _error(e.code or 500, e.description or e.name, "invalid_request_error")

    @app.post("/v1/chat/completions")
    def chat_completions() -> flask.Response:
        if api_key and flask.request.headers.get("Authorization") != f"Bearer {api_key}":
            return _error(401, "Incorrect API key provided.", "invalid_request_error",
                          "invalid_api_key")  # fmt: skip
        call = stats.arrive()
        status = 500  # if anything below raises, Flask answers 500: count it as that
        trickled = False
        try:
            response = _answer(call)
            status = response.status_code
            trickled = not response.is_sequence  # it finishes the call once the body is sent
            return response
        finally:
            if not trickled:
                stats.finish(call, status)

    def _trickle(call: _Call, body: bytes, pause_s: float) -> flask.Response:
        def pieces() -> Iterator[bytes]:
            closed = False
            try:
                for start in range(0, len(body), TRICKLE_BYTES):
                    if start:
                        stop.wait(pause_s)
                    yield body[start : start + TRICKLE_BYTES]
            except GeneratorExit:
                # The server closes the body when writing to the client failed.
                closed = True
                raise
            finally:
                stats.finish(call, 200, client_closed=closed)

        return flask.Response(
            pieces(), mimetype="application/json", headers={"Content-Length": str(len(body))}
        )

    def _answer(call: _Call) -> flask.Response:
        try:
            request = parse_chat_request(flask.request.get_data())
        except InvalidRequest as e:
            return _error(400, str(e), "invalid_request_error")
        stats.set_content(call, request.last_user[:CONTENT_CHARS])

        admission = stats.admit(call, config.get())
        if not admission.ok:
            return _error(
                429,
                admission.reason,
                "rate_limit_error",
                "rate_limit_exceeded",
                {"Retry-After": str(admission.retry_after)},
            )

        behaviour, draw = config.draw()
        latency_ms = behaviour.latency_ms + draw.jitter * behaviour.latency_jitter_ms
        if latency_ms > 0:
            stop.wait(latency_ms / 1000)
        if draw.hang:
            stop.wait(behaviour.timeout_sleep_s)

        marker = behaviour.permanent_failure_marker
        if marker is not None and marker in request.last_user:
            return _error(
                400,
                "Invalid request: the message was rejected and will be every time "
                f"(it contains the permanent failure marker {marker!r}).",
                "invalid_request_error",
            )
        if draw.fail:
            return _error(
                500,
                "The server had an error while processing your request. Sorry about that!",
                "server_error",
            )
        if behaviour.trickle_ms > 0:
            body = json.dumps(completion_body(request)).encode()
            return _trickle(call, body, behaviour.trickle_ms / 1000)
        return json_response(completion_body(request))

    add_control_routes(
        app, config, stats, lambda message: _error(400, message, "invalid_request_error")
    )

    @app.get("/_sluice/requests")
    def get_requests() -> flask.Response:
        limit = parse_limit(flask.request.args.get("limit"), 100)
        if limit is None:
            return _error(400, "'limit' must be a non-negative integer.", "invalid_request_error")
        return json_response(stats.recent(limit))

    @app.get("/")
    def index() -> flask.Response:
        return flask.Response(
            _page(stats.snapshot(), config.as_dict(), stats.recent(50)), mimetype="text/html"
        )

    return app


def _page(stats: dict[str, Any], config: dict[str, Any], recent: list[dict[str, Any]]) -> str:
    def table(rows: dict[str, Any]) -> str:
        cells = "".join(
            f"<tr><th>{html.escape(k)}</th><td>{html.escape(json.dumps(v))}</td></tr>"
            for k, v in rows.items()
        )
        return f"<table>{cells}</table>"

    def when(t: float | None) -> str:
        if t is None:
            return "-"
        return time.strftime("%H:%M:%S", time.localtime(t)) + f".{int(t % 1 * 1000):03d}"

    calls = "".join(
        "<tr>"
        f"<td>{when(c['at'])}</td><td>{when(c['ended'])}</td>"
        f"<td>{'in flight' if c['status'] is None else c['status']}</td>"
        f"<td>{html.escape(c['content'])}</td>"
        "</tr>"
        for c in reversed(recent)
    )
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><meta http-equiv="refresh" content="2">
<title>Sluice fake provider</title>
<style>body{{font-family:sans-serif}} td,th{{padding:2px 8px;text-align:left}}</style>
</head><body>
<h1>Sluice fake provider</h1>
<h2>Stats</h2>{table(stats)}
<h2>Config</h2>{table(config)}
<h2>Last {len(recent)} requests, newest first</h2>
<table><tr><th>at</th><th>ended</th><th>status</th><th>content</th></tr>{calls}</table>
</body></html>
"""


# --- command line --------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m localcloud.provider_server",
        description="A fake OpenAI-compatible chat completions provider for local runs and tests.",
    )
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0, help="0 (the default) picks a free port")
    p.add_argument("--latency-ms", type=float, default=0.0, help="sleep this long per call")
    p.add_argument("--latency-jitter-ms", type=float, default=0.0, help="plus or minus this much")
    p.add_argument("--failure-rate", type=float, default=0.0, help="fraction answered 500")
    p.add_argument(
        "--timeout-rate", type=float, default=0.0, help="fraction that hang before answering"
    )
    p.add_argument("--timeout-sleep-s", type=float, default=60.0, help="how long a hang lasts")
    p.add_argument(
        "--trickle-ms", type=float, default=0.0, help="send answers in small pieces this far apart"
    )
    p.add_argument(
        "--permanent-failure-marker",
        default=None,
        help="a last user message containing this is answered 400",
    )
    p.add_argument(
        "--rate-limit-per-minute",
        type=int,
        default=None,
        help="past this many accepted calls in 60 s, answer 429",
    )
    p.add_argument(
        "--max-concurrent", type=int, default=None, help="past this many in flight, answer 429"
    )
    p.add_argument("--seed", type=int, default=None, help="seed the random failures and hangs")
    p.add_argument(
        "--api-key",
        default=os.environ.get(API_KEY_ENV) or None,
        help=f"answer 401 to calls without this bearer key (default: ${API_KEY_ENV}; prefer the "
        "variable, which `ps` does not show)",
    )
    p.add_argument("--log-requests", action="store_true", help="log each request to stderr")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        config = ProviderConfig(
            latency_ms=args.latency_ms,
            latency_jitter_ms=args.latency_jitter_ms,
            failure_rate=args.failure_rate,
            timeout_rate=args.timeout_rate,
            timeout_sleep_s=args.timeout_sleep_s,
            trickle_ms=args.trickle_ms,
            permanent_failure_marker=args.permanent_failure_marker,
            rate_limit_per_minute=args.rate_limit_per_minute,
            max_concurrent=args.max_concurrent,
            seed=args.seed,
        )
    except ValidationError as e:
        parser.error(str(e))

    return serve(
        lambda stopping: create_app(config, stopping=stopping, api_key=args.api_key),
        args.host,
        args.port,
        name="provider-server",
        log_requests=args.log_requests,
    )


if __name__ == "__main__":
    sys.exit(main())
