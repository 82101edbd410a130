"""A fake WhatsApp Cloud API (Meta Graph API) messages endpoint, for local runs and tests of a bot.

A WhatsApp bot replies by calling `POST https://graph.facebook.com/{version}/{phone_number_id}/
messages` with `Authorization: Bearer <access token>`. Point the bot's Graph base URL at this
server instead and it answers that call as Meta does: the same request checks, the same success
body (`contacts` and a `wamid.` message id) and the same error body (`error.code`,
`error.error_data.details`, `error.fbtrace_id`). Its bad days can be switched on: latency, random
131000 failures, the per-phone-number throughput limit (130429) and the per-recipient pair limit
(131056).

What it was sent is kept, so a test can assert what the bot replied: `GET /_sluice/messages`,
`GET /_sluice/stats` (`max_per_second`, `by_error_code`, ...), `POST /_sluice/reset`; the
behaviour is read and changed at runtime with `GET`/`POST /_sluice/config`; `GET /` shows the last
replies in a browser. These, the counters, the log, the page and the command line come from
`local_server`, the base of every local server.

Run it with `python -m localcloud.graph_server --port 0 --messages-per-second 80` (one flag per
behaviour field; the access token is best given in $SLUICE_GRAPH_ACCESS_TOKEN); it prints
`listening on http://HOST:PORT` once bound, and serves until SIGTERM or SIGINT.
"""

from __future__ import annotations

import base64
import hmac
import json
import math
import re
import secrets
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any

import flask
from pydantic import Field
from werkzeug.exceptions import HTTPException

from localcloud.local_server import (
    BaseBehaviour,
    Clock,
    Column,
    Counters,
    LocalServer,
    LogView,
    RuntimeConfig,
    ServeOptions,
    SlidingWindow,
    by_key,
    from_env,
    json_object,
    json_response,
    local_app,
    pause,
    when,
)

DEFAULT_ACCESS_TOKEN = "local-access-token"
# The token is read from here: a secret on a command line is readable by anyone on the machine.
ACCESS_TOKEN_ENV = "SLUICE_GRAPH_ACCESS_TOKEN"
VERSION = re.compile(r"v\d+\.\d+")
TEXT_MAX_CHARS = 4096  # Meta's limit on `text.body`
RECIPIENT_TYPES = frozenset({"individual", "group"})
SECOND_S = 1.0

# Meta's codes. Clients must key on `error.code`, as Meta asks: the HTTP status of an error varies
# (its docs list 400 for the rate limits), and titles in `message` are being deprecated.
INVALID_TOKEN = 190
INVALID_PARAMETER = 100
THROUGHPUT_LIMIT = 130429
PAIR_LIMIT = 131056
UNKNOWN_ERROR = 131000
INVALID_TOKEN_MESSAGE = "Invalid OAuth access token - Cannot parse access token"


class Behaviour(BaseBehaviour):
    """How the Graph API behaves."""

    access_token: str = Field(
        default=DEFAULT_ACCESS_TOKEN,
        min_length=1,
        description="the bearer token callers must send",
        json_schema_extra=from_env(ACCESS_TOKEN_ENV),
    )
    messages_per_second: int | None = Field(
        default=None, ge=0, description="per phone number, past this many in 1 s answer 130429"
    )
    pair_min_interval_s: float | None = Field(
        default=None,
        ge=0,
        description="a second message to the same recipient within this many seconds answers "
        "131056",
    )
    latency_ms: float = Field(default=0.0, ge=0, description="sleep this long per call")
    # The window in which a sender that dies, or gives up waiting, has sent a message without
    # knowing it.
    answer_delay_ms: float = Field(
        default=0.0,
        ge=0,
        description="hold the answer to an accepted (and listed) message back this long",
    )
    failure_rate: float = Field(default=0.0, ge=0, le=1, description="fraction answered 131000")


class GraphConfig(RuntimeConfig[Behaviour]):
    """The current `Behaviour` plus the random generator it seeds; safe to share between threads."""

    model = Behaviour

    def draw(self) -> tuple[Behaviour, bool]:
        """The behaviour and whether this call fails, taken together under the lock."""
        return self._draw(lambda b, rng: rng.random() < b.failure_rate)


# --- errors --------------------------------------------------------------------------------------


def fbtrace_id() -> str:
    return "A" + secrets.token_urlsafe(17)[:22]


class GraphError(Exception):
    """An error answer in the Graph API's format.

    `error_subcode` is left out: Meta deprecated it and stopped sending it from v16.0.
    """

    def __init__(
        self,
        status: int,
        code: int,
        message: str,
        details: str | None = None,
        *,
        type_: str = "OAuthException",
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.details = details
        self.type = type_
        self.headers = headers

    def response(self) -> flask.Response:
        error: dict[str, Any] = {"message": self.message, "type": self.type, "code": self.code}
        if self.details is not None:
            error["error_data"] = {"messaging_product": "whatsapp", "details": self.details}
        error["fbtrace_id"] = fbtrace_id()
        return json_response({"error": error}, self.status, self.headers)


def invalid(details: str) -> GraphError:
    return GraphError(400, INVALID_PARAMETER, "(#100) Invalid parameter", details)


def unauthorized() -> GraphError:
    return GraphError(
        401,
        INVALID_TOKEN,
        INVALID_TOKEN_MESSAGE,
        headers={
            "WWW-Authenticate": f'OAuth "Facebook Platform" "invalid_token" '
            f'"{INVALID_TOKEN_MESSAGE}"'
        },
    )


def rate_limited(code: int, retry_after: int) -> GraphError:
    # Meta answers these with HTTP 400 (its docs say so, though what is seen varies); here they get
    # 429 and `Retry-After`, so that a client's generic HTTP back-off works too. A client must key
    # on `error.code`, 130429 or 131056, not on the status.
    if code == THROUGHPUT_LIMIT:
        message = "(#130429) Rate limit hit"
        details = (
            "Message failed to send because there were too many messages sent from this phone "
            "number in a short period of time."
        )
    else:
        message = "(#131056) (Business Account, Consumer Account) pair rate limit hit"
        details = (
            "Message failed to send because there were too many messages sent from this phone "
            "number to the same phone number in a short period of time."
        )
    return GraphError(429, code, message, details, headers={"Retry-After": str(retry_after)})


def something_went_wrong() -> GraphError:
    return GraphError(
        500,
        UNKNOWN_ERROR,
        "(#131000) Something went wrong",
        "Message failed to send due to an unknown error.",
    )


# --- request bodies ------------------------------------------------------------------------------


@dataclass(frozen=True)
class OutgoingMessage:
    to: str
    type: str
    body: dict[str, Any]  # the whole request body, as sent


def parse_message(raw: bytes) -> OutgoingMessage:
    """A send-message body as Meta documents it; raises `GraphError` (#100) if it is not one.

    Every message type is accepted generically, as an object under the key its `type` names;
    only `text` is checked further.
    """
    body = json_object(raw, invalid, "The request body is not valid JSON")
    if "messaging_product" not in body:
        raise invalid("The parameter messaging_product is required.")
    if body["messaging_product"] != "whatsapp":
        raise invalid("Param messaging_product must be 'whatsapp'.")
    recipient_type = body.get("recipient_type", "individual")
    if recipient_type not in RECIPIENT_TYPES:
        raise invalid("Param recipient_type must be 'individual' or 'group'.")
    to = body.get("to")
    if to is None:
        raise invalid("The parameter to is required.")
    if not isinstance(to, str) or not to.strip():
        raise invalid("Param to must be a non-empty string.")
    type_ = body.get("type", "text")  # Meta's default when `type` is left out
    if not isinstance(type_, str) or not type_:
        raise invalid("Param type must be a non-empty string.")
    if type_ not in body:
        raise invalid(f"The parameter {type_} is required.")
    content = body[type_]
    if not isinstance(content, dict):
        raise invalid(f"Param {type_} must be an object.")
    if type_ == "text":
        _check_text(content)
    return OutgoingMessage(to=to, type=type_, body=body)


def _check_text(text: dict[str, Any]) -> None:
    if "body" not in text:
        raise invalid("The parameter text['body'] is required.")
    message = text["body"]
    if not isinstance(message, str) or not message:
        raise invalid("Param text['body'] must be a non-empty string.")
    if len(message) > TEXT_MAX_CHARS:
        raise invalid(f"Param text['body'] must be at most {TEXT_MAX_CHARS} characters long.")
    if not isinstance(text.get("preview_url", False), bool):
        raise invalid("Param text['preview_url'] must be a boolean.")


def new_message_id(to: str) -> str:
    """A `wamid.` id shaped like Meta's: base64 of the recipient and 18 random hex digits."""
    recipient = to.encode()[:255]
    raw = (
        b"\x1c\x18"
        + bytes([len(recipient)])
        + recipient
        + b"\x15\x02\x00\x11\x18\x12"
        + secrets.token_hex(9).upper().encode()
        + b"\x00"
    )
    return "wamid." + base64.b64encode(raw).decode()


def _bearer_token(header: str | None) -> str | None:
    if header is None:
        return None
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() != "bearer":
        return None
    return token.strip() or None


# --- what the server saw -------------------------------------------------------------------------


@dataclass(frozen=True)
class SentMessage:
    id: str
    phone_number_id: str
    to: str
    type: str
    body: dict[str, Any]
    at: float  # epoch seconds

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "phone_number_id": self.phone_number_id,
            "to": self.to,
            "type": self.type,
            "body": self.body,
            "at": self.at,
        }


@dataclass(frozen=True)
class _Call:
    phone_number_id: str
    generation: int


class GraphStats(Counters[SentMessage]):
    """What the server saw and sent: its log lists the messages it accepted."""

    def _zero(self) -> None:
        super()._zero()
        self._accepted = 0
        self._by_error_code: dict[int, int] = {}
        # Per phone number id: every arrival, and the calls the throughput limit let in.
        self._arrivals: dict[str, SlidingWindow] = {}
        self._admitted: dict[str, SlidingWindow] = {}
        self._max_per_second: dict[str, int] = {}
        # (phone number id, recipient) -> monotonic time the pair limit last let a call in.
        self._last_to: dict[tuple[str, str], float] = {}

    def _counted(self) -> dict[str, Any]:
        return {
            "accepted": self._accepted,
            "by_error_code": by_key(self._by_error_code),
            "max_per_second": dict(sorted(self._max_per_second.items())),
        }

    def arrive(self, phone_number_id: str) -> _Call:
        with self._lock:
            window = self._arrivals.setdefault(phone_number_id, SlidingWindow(SECOND_S))
            seen = window.add(self._clock())
            peak = self._max_per_second.get(phone_number_id, 0)
            self._max_per_second[phone_number_id] = max(peak, seen)
            return _Call(phone_number_id, self._arrived())

    def admit(self, call: _Call, to: str, behaviour: Behaviour) -> None:
        """Let the call through both limits, or raise the `GraphError` of the first it hits.
        Check and count in one step, so no two calls can both take the last slot.

        A call let through counts against the limits even if it then fails with 131000."""
        with self._lock:
            now = self._clock()
            window = self._admitted.setdefault(call.phone_number_id, SlidingWindow(SECOND_S))
            per_second = behaviour.messages_per_second
            if per_second is not None and window.count(now) >= per_second:
                raise rate_limited(THROUGHPUT_LIMIT, window.retry_after(now))
            pair = (call.phone_number_id, to)
            interval = behaviour.pair_min_interval_s
            last = self._last_to.get(pair)
            if interval is not None and last is not None and now - last < interval:
                raise rate_limited(PAIR_LIMIT, max(1, math.ceil(last + interval - now)))
            window.add(now)
            self._last_to[pair] = now

    def finish(self, call: _Call, status: int, code: int | None, sent: SentMessage | None) -> None:
        with self._lock:
            if not self._answered(call.generation, status):
                return
            if code is not None:
                self._by_error_code[code] = self._by_error_code.get(code, 0) + 1
            if sent is not None:
                self._accepted += 1
                self._log.append(sent)


def success_body(sent: SentMessage) -> dict[str, Any]:
    return {
        "messaging_product": "whatsapp",
        "contacts": [{"input": sent.to, "wa_id": sent.to}],
        "messages": [{"id": sent.id}],
    }


# --- the app -------------------------------------------------------------------------------------


def _summary(message: dict[str, Any]) -> str:
    """What a person would see: a text's body, or the object of any other type as JSON."""
    content = message["body"][message["type"]]
    if message["type"] == "text":
        return str(content["body"])
    return json.dumps(content, ensure_ascii=False)


LOG = LogView(
    "/_sluice/messages",
    "messages sent",
    [
        Column("at", lambda m: when(m["at"])),
        Column("from (phone number id)", lambda m: str(m["phone_number_id"])),
        Column("to", lambda m: str(m["to"])),
        Column("type", lambda m: str(m["type"])),
        Column("message", _summary, css="text"),
    ],
    filters=("to", "phone_number_id"),
)


def create_app(
    config: GraphConfig | None = None,
    *,
    clock: Clock = time.monotonic,
    stopping: threading.Event | None = None,
) -> flask.Flask:
    """The Graph API as a Flask app. `clock` (monotonic seconds) drives the rate limits, so a test
    can move time; setting `stopping` cuts short every sleep, so a shutdown need not wait."""
    config = config if config is not None else GraphConfig()
    stats = GraphStats(clock)
    stop = stopping if stopping is not None else threading.Event()

    def http_error(e: HTTPException) -> flask.Response:
        return GraphError(
            e.code or 500, INVALID_PARAMETER, e.description or e.name, type_="GraphMethodException"
        ).response()

    app = local_app(
        __name__,
        title="Sluice fake WhatsApp Cloud API",
        config=config,
        counters=stats,
        log=LOG,
        bad_request=lambda message: invalid(message).response(),
        http_error=http_error,
    )

    @app.post("/<version>/<phone_number_id>/messages")
    def send_message(version: str, phone_number_id: str) -> flask.Response:
        if not VERSION.fullmatch(version):
            flask.abort(404, f"Unknown path components: /{version}/{phone_number_id}/messages")
        call = stats.arrive(phone_number_id)
        status = 500  # if anything below raises, Flask answers 500: count it as that
        code: int | None = None
        sent: SentMessage | None = None
        try:
            sent = _send(call)
            status = 200
        except GraphError as e:
            status, code = e.status, e.code
            return e.response()
        finally:
            stats.finish(call, status, code, sent)
        # Accepted and listed already, whatever happens to the answer.
        pause(stop, config.get().answer_delay_ms)
        return json_response(success_body(sent))

    def _send(call: _Call) -> SentMessage:
        behaviour = config.get()
        token = _bearer_token(flask.request.headers.get("Authorization"))
        if token is None or not hmac.compare_digest(
            token.encode(), behaviour.access_token.encode()
        ):
            raise unauthorized()
        message = parse_message(flask.request.get_data())
        stats.admit(call, message.to, behaviour)

        behaviour, fail = config.draw()
        pause(stop, behaviour.latency_ms)
        if fail:
            raise something_went_wrong()
        return SentMessage(
            id=new_message_id(message.to),
            phone_number_id=call.phone_number_id,
            to=message.to,
            type=message.type,
            body=message.body,
            at=time.time(),
        )

    return app


# --- command line --------------------------------------------------------------------------------

SERVER = LocalServer(
    module="localcloud.graph_server",
    description="A fake WhatsApp Cloud API messages endpoint for local runs and tests.",
    config=GraphConfig,
    options=ServeOptions,
    make_app=lambda config, options, stopping, url: create_app(config, stopping=stopping),
)


if __name__ == "__main__":
    sys.exit(SERVER.main())
