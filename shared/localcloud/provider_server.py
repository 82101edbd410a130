"""A fake OpenAI-compatible model provider, for local runs and tests of the batch job.

The batch processor calls a slow, rate-limited model provider. To try it without one, this server
answers `POST /v1/chat/completions` with a realistic `chat.completion` body whose content is
derived from the last user message ("echo: " + its first 200 characters), so a test can check
that every item got its own answer; and `POST /v1/images/generations` (an image model) with the
URL of an image named after its prompt, which it serves. Both share the limits below. Its bad
days can be switched on: latency and jitter, random 500s, hangs, a marker that makes an item fail
for good with a 400, a per-minute rate limit and a concurrency limit, both answered with 429 and
`Retry-After` like the real thing.

What it saw is counted, so a test can assert how the client behaved: `GET /_sluice/stats`
(`max_in_flight`, `max_per_minute`, ...), `GET /_sluice/requests`, `POST /_sluice/reset`; the
behaviour is read and changed at runtime with `GET`/`POST /_sluice/config`; `GET /` shows it all
in a browser. These, the counters, the log, the page and the command line come from
`local_server`, the base of every local server.

Run it with `python -m localcloud.provider_server --port 0 --latency-ms 200` (one flag per
behaviour field); it prints `listening on http://HOST:PORT` once bound, and serves until SIGTERM
or SIGINT.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import struct
import sys
import threading
import time
import uuid
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import flask
from pydantic import Field
from werkzeug.exceptions import HTTPException

from localcloud.local_server import (
    BaseBehaviour,
    Call,
    Clock,
    Column,
    Counters,
    LocalServer,
    RuntimeConfig,
    ServeOptions,
    SlidingWindow,
    calls_log,
    from_env,
    json_object,
    json_response,
    local_app,
    pause,
)

CONTENT_CHARS = 200  # how much of the user message is echoed back and kept in the request log
WINDOW_S = 60.0
ECHO_PREFIX = "echo: "
# The API key is read from here: a secret on a command line is readable by anyone on the machine.
API_KEY_ENV = "SLUICE_PROVIDER_API_KEY"
TRICKLE_BYTES = 16  # a trickled answer is sent in pieces of this size


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


# A valid PNG of one white pixel (8-bit greyscale), what every generated image is here.
PIXEL_PNG = b"".join([
    b"\x89PNG\r\n\x1a\n",
    _png_chunk(b"IHDR", struct.pack(">IIBBBBB", 1, 1, 8, 0, 0, 0, 0)),
    _png_chunk(b"IDAT", zlib.compress(b"\x00\xff")),
    _png_chunk(b"IEND", b""),
])  # fmt: skip


class Behaviour(BaseBehaviour):
    """How the provider behaves."""

    latency_ms: float = Field(default=0.0, ge=0, description="sleep this long per call")
    latency_jitter_ms: float = Field(default=0.0, ge=0, description="plus or minus this much")
    failure_rate: float = Field(default=0.0, ge=0, le=1, description="fraction answered 500")
    timeout_rate: float = Field(
        default=0.0, ge=0, le=1, description="fraction that hang before answering"
    )
    timeout_sleep_s: float = Field(default=60.0, ge=0, description="how long a hang lasts")
    # A successful answer sent in pieces of TRICKLE_BYTES this far apart: every read is quick,
    # the whole answer is slow (what a total deadline is for).
    trickle_ms: float = Field(
        default=0.0, ge=0, description="send answers in small pieces this far apart"
    )
    # An empty marker would match every message; refuse it, use null to switch it off.
    permanent_failure_marker: str | None = Field(
        default=None,
        min_length=1,
        description="a last user message containing this is answered 400",
    )
    rate_limit_per_minute: int | None = Field(
        default=None, ge=0, description="past this many accepted calls in 60 s, answer 429"
    )
    max_concurrent: int | None = Field(
        default=None, ge=0, description="past this many in flight, answer 429"
    )


class Options(ServeOptions):
    """Fixed at start: not part of the behaviour, so that `/_sluice/config` never shows it."""

    api_key: str | None = Field(
        default=None,
        description="answer 401 to calls without this bearer key",
        json_schema_extra=from_env(API_KEY_ENV),
    )


@dataclass(frozen=True)
class Draw:
    """The random choices for one admitted call."""

    jitter: float  # in [-1, 1], times latency_jitter_ms
    hang: bool
    fail: bool


class ProviderConfig(RuntimeConfig[Behaviour]):
    """The current `Behaviour` plus the random generator it seeds; safe to share between threads."""

    model = Behaviour

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
class _Call(Call):
    content: str = ""
    admitted: bool = False
    # The client closed the connection before the whole answer was sent.
    client_closed: bool = False

    def as_dict(self) -> dict[str, Any]:
        return {**super().as_dict(), "content": self.content, "client_closed": self.client_closed}


@dataclass(frozen=True)
class Admission:
    ok: bool
    retry_after: int = 0
    reason: str = ""


class ProviderStats(Counters[_Call]):
    """What the provider saw: every call is logged as it arrives."""

    def __init__(self, clock: Clock = time.monotonic) -> None:
        self._in_flight = 0
        super().__init__(clock)

    def _zero(self) -> None:
        super()._zero()
        self._rate_limited = 0
        # In-flight calls are real and will still end, so the gauge survives a reset; the peak
        # restarts from it.
        self._max_in_flight = self._in_flight
        self._max_per_minute = 0
        self._arrivals = SlidingWindow(WINDOW_S)  # monotonic arrival times
        self._accepted = SlidingWindow(WINDOW_S)  # the same, for calls the rate limiter let in

    def _counted(self) -> dict[str, Any]:
        return {
            "in_flight": self._in_flight,
            "max_in_flight": self._max_in_flight,
            "rate_limited": self._rate_limited,
            "max_per_minute": self._max_per_minute,
        }

    def arrive(self) -> _Call:
        with self._lock:
            self._max_per_minute = max(self._max_per_minute, self._arrivals.add(self._clock()))
            call = _Call(generation=self._arrived(), at=time.time())
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
            call.client_closed = client_closed
            if self._end(call, status) and status == 429:
                self._rate_limited += 1


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
    # The URLs of the last user message's images (content parts of type image_url).
    images: tuple[str, ...] = ()

    @property
    def content(self) -> str:
        """What the log keeps and the failure marker is looked for in: the text, then each
        image as `<image URL>`."""
        return "".join([self.last_user, *(f" <image {url}>" for url in self.images)])

    def answer(self, url: str) -> dict[str, Any]:
        return completion_body(self)


@dataclass(frozen=True)
class ImageRequest:
    """`POST /v1/images/generations`, as OpenAI's images API takes it (with `image`, the URL of
    an image to start from, as image-editing models take it)."""

    model: str
    prompt: str

    @property
    def content(self) -> str:
        return self.prompt

    def answer(self, url: str) -> dict[str, Any]:
        image = hashlib.sha256(f"{self.model}\n{self.prompt}".encode()).hexdigest()[:24]
        return {
            "created": int(time.time()),
            "data": [{"url": f"{url.rstrip('/')}/images/{image}.png",
                      "revised_prompt": self.prompt[:CONTENT_CHARS]}],
        }  # fmt: skip


def parse_image_request(raw: bytes) -> ImageRequest:
    body = json_object(raw, InvalidRequest, "We could not parse the JSON body of your request")
    model, prompt = body.get("model"), body.get("prompt")
    if not isinstance(model, str) or not model:
        raise InvalidRequest("You must provide a model parameter.")
    if not isinstance(prompt, str) or not prompt.strip():
        raise InvalidRequest("'prompt' must be a non-empty string.")
    if "image" in body and not isinstance(body["image"], str):
        raise InvalidRequest("'image' must be the URL of an image.")
    return ImageRequest(model=model, prompt=prompt)


def parse_chat_request(raw: bytes) -> ChatRequest:
    body = json_object(raw, InvalidRequest, "We could not parse the JSON body of your request")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise InvalidRequest("You must provide a model parameter.")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise InvalidRequest("'messages' must be a non-empty array.")
    texts: list[str] = []
    last_user = ""
    images: tuple[str, ...] = ()
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise InvalidRequest(f"messages[{i}] must be an object with a string 'role'.")
        text = _text(message.get("content"))
        texts.append(text)
        if message["role"] == "user":
            last_user, images = text, _images(message.get("content"))
    return ChatRequest(model=model, texts=texts, last_user=last_user, images=images)


def _images(content: Any) -> tuple[str, ...]:
    """The URLs of a message's image parts (`{"type": "image_url", "image_url": {"url"}}`)."""
    if not isinstance(content, list):
        return ()
    urls = []
    for part in content:
        if part.get("type") == "image_url":
            image = part.get("image_url")
            url = image.get("url") if isinstance(image, dict) else None
            if not isinstance(url, str) or not url:
                raise InvalidRequest("An image_url content part must have an 'image_url.url'.")
            urls.append(url)
    return tuple(urls)


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

LOG = calls_log(Column("content", lambda c: str(c["content"]), css="text"))


def create_app(
    config: ProviderConfig | None = None,
    *,
    clock: Clock = time.monotonic,
    stopping: threading.Event | None = None,
    api_key: str | None = None,
    url: str = "",
) -> flask.Flask:
    """The provider as a Flask app. `clock` (monotonic seconds) drives the 60 s windows, so a test
    can move time; setting `stopping` cuts short every sleep, so a shutdown need not wait. With
    `api_key`, a call without `Authorization: Bearer <api_key>` is a 401, as OpenAI answers it."""
    config = config if config is not None else ProviderConfig()
    stats = ProviderStats(clock)
    stop = stopping if stopping is not None else threading.Event()

    def http_error(e: HTTPException) -> flask.Response:
        return _error(e.code or 500, e.description or e.name, "invalid_request_error")

    app = local_app(
        __name__,
        title="Sluice fake provider",
        config=config,
        counters=stats,
        log=LOG,
        bad_request=lambda message: _error(400, message, "invalid_request_error"),
        http_error=http_error,
    )

    @app.post("/v1/chat/completions")
    def chat_completions() -> flask.Response:
        return _serve(parse_chat_request)

    @app.post("/v1/images/generations")
    def image_generations() -> flask.Response:
        return _serve(parse_image_request)

    @app.get("/images/<name>.png")
    def image(name: str) -> flask.Response:
        # A generated image: a 1x1 PNG, enough for a client that fetches what it was given.
        return flask.Response(PIXEL_PNG, mimetype="image/png")

    def _serve(parse: Callable[[bytes], ChatRequest | ImageRequest]) -> flask.Response:
        if api_key and flask.request.headers.get("Authorization") != f"Bearer {api_key}":
            return _error(401, "Incorrect API key provided.", "invalid_request_error",
                          "invalid_api_key")  # fmt: skip
        call = stats.arrive()
        status = 500  # if anything below raises, Flask answers 500: count it as that
        trickled = False
        try:
            response = _answer(call, parse)
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

    def _answer(
        call: _Call, parse: Callable[[bytes], ChatRequest | ImageRequest]
    ) -> flask.Response:
        try:
            request = parse(flask.request.get_data())
        except InvalidRequest as e:
            return _error(400, str(e), "invalid_request_error")
        stats.set_content(call, request.content[:CONTENT_CHARS])

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
        pause(stop, behaviour.latency_ms + draw.jitter * behaviour.latency_jitter_ms)
        if draw.hang:
            stop.wait(behaviour.timeout_sleep_s)

        marker = behaviour.permanent_failure_marker
        if marker is not None and marker in request.content:
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
            body = json.dumps(request.answer(url)).encode()
            return _trickle(call, body, behaviour.trickle_ms / 1000)
        return json_response(request.answer(url))

    return app


# --- command line --------------------------------------------------------------------------------

SERVER = LocalServer(
    module="localcloud.provider_server",
    description="A fake OpenAI-compatible chat completions provider for local runs and tests.",
    config=ProviderConfig,
    options=Options,
    make_app=lambda config, options, stopping, url: create_app(
        config, stopping=stopping, api_key=options.api_key, url=url
    ),
)


if __name__ == "__main__":
    sys.exit(SERVER.main())
