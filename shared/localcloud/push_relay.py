"""Pub/Sub push at the concurrency Cloud Run would serve, over the emulator's pull subscriptions.

The emulator's own push sends two messages at a time per subscription (two push threads, fixed in
its jar), whatever the function behind it could serve, so locally a batch would measure the
emulator, not Sluice. On a pull subscription the emulator keeps everything else push relies on:
the ack deadline, the retry policy's backoff, the dead-letter policy (after
`max_delivery_attempts` the message goes to the dead-letter topic with the
`CloudPubSubDeadLetterSource*` attributes) and `delivery_attempt`.

So the local cloud creates each subscription of `topology.yaml` as a pull subscription with those
policies, and this relay does what Pub/Sub push does with it: it POSTs each message to the
subscription's push endpoint as the production push body (`deliveryAttempt` included where a
dead-letter policy is set), with the ack deadline as the HTTP timeout, acknowledges on 102, 200,
201, 202 or 204 and nacks anything else (a timeout, a refused connection) so that the emulator's
backoff and dead-lettering apply. It keeps as many messages in flight per subscription as the
target function's local instances serve (instances x threads), and at most one per ordering key,
in order: a nacked message holds its key's later messages back (they are nacked too, unsent)
until it comes again.

The functions cannot tell it from push: the same path, body and headers.

`python -m localcloud.push_relay CONFIG.json` relays every subscription the file lists.
"""

from __future__ import annotations

import base64
import json
import logging
import signal
import sys
import threading
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC
from pathlib import Path
from typing import Any

import httpx
from google.cloud import pubsub_v1  # type: ignore[attr-defined]
from google.cloud.pubsub_v1.subscriber.message import Message
from google.cloud.pubsub_v1.subscriber.scheduler import ThreadScheduler

log = logging.getLogger("localcloud.push_relay")

# What Pub/Sub push takes as an acknowledgement; anything else is a nack.
ACK_STATUSES = frozenset({102, 200, 201, 202, 204})
# The User-Agent Pub/Sub push sends.
USER_AGENT = "APIs-Google; (+https://developers.google.com/webmasters/APIs-Google.html)"


@dataclass(frozen=True)
class Route:
    """One subscription relayed to one push endpoint."""

    subscription: str  # projects/P/subscriptions/S
    endpoint: str
    in_flight: int  # what the target function serves at once: instances x threads
    ack_deadline_seconds: int
    dead_letter: bool  # Pub/Sub sets deliveryAttempt only where a dead-letter policy is set
    ordering: bool = False
    # The subscription's retry policy, which the relay applies itself where the emulator does
    # not: on an ordered pull subscription it delivers a nacked message again at once.
    minimum_backoff_seconds: float = 10.0
    maximum_backoff_seconds: float = 600.0

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> Route:
        return cls(
            subscription=str(raw["subscription"]),
            endpoint=str(raw["endpoint"]),
            in_flight=int(raw["in_flight"]),
            ack_deadline_seconds=int(raw["ack_deadline_seconds"]),
            dead_letter=bool(raw["dead_letter"]),
            ordering=bool(raw.get("ordering", False)),
            minimum_backoff_seconds=float(raw.get("minimum_backoff_seconds", 10)),
            maximum_backoff_seconds=float(raw.get("maximum_backoff_seconds", 600)),
        )

    def backoff(self, attempt: int) -> float:
        """The retry policy's wait after the `attempt`th delivery failed: exponential from the
        minimum, capped at the maximum."""
        return min(self.maximum_backoff_seconds,
                   self.minimum_backoff_seconds * 2 ** max(attempt - 1, 0))  # fmt: skip


def push_body(message: Message, subscription: str, *, dead_letter: bool) -> dict[str, Any]:
    """The JSON body Pub/Sub push POSTs for `message` (both spellings of the id and time, as
    production push sends them)."""
    when = message.publish_time.astimezone(UTC)
    published = when.isoformat(timespec="milliseconds").replace("+00:00", "Z")
    body: dict[str, Any] = {
        "message": {
            "data": base64.b64encode(message.data).decode(),
            "messageId": message.message_id,
            "message_id": message.message_id,
            "publishTime": published,
            "publish_time": published,
        },
        "subscription": subscription,
    }
    if message.attributes:
        body["message"]["attributes"] = dict(message.attributes)
    if message.ordering_key:
        body["message"]["orderingKey"] = message.ordering_key
    if dead_letter and message.delivery_attempt:
        body["deliveryAttempt"] = message.delivery_attempt
    return body


class Relay:
    """One subscription: pulled under flow control (at most `in_flight` messages outstanding,
    held one at a time per ordering key by the client library), each POSTed by a thread of its
    own pool."""

    def __init__(
        self, route: Route, *, subscriber: pubsub_v1.SubscriberClient, http: httpx.Client
    ) -> None:
        self.route = route
        self._subscriber = subscriber
        self._http = http
        # Ordering key -> the id of the nacked message its later messages wait behind.
        self._blocked: dict[str, str] = {}
        self._lock = threading.Lock()
        self._future: Any = None

    def start(self) -> None:
        route = self.route
        self._future = self._subscriber.subscribe(
            route.subscription,
            callback=self.deliver,
            flow_control=pubsub_v1.types.FlowControl(
                max_messages=route.in_flight,
                # Push redelivers a message whose request outlived the ack deadline; here the
                # request's timeout nacks it first, so the lease never needs to run longer.
                max_lease_duration=route.ack_deadline_seconds + 30,
            ),
            scheduler=ThreadScheduler(
                ThreadPoolExecutor(route.in_flight, thread_name_prefix="push")
            ),
        )

    def stop(self) -> None:
        if self._future is not None:
            self._future.cancel()

    def deliver(self, message: Message) -> None:
        key = message.ordering_key
        if key and not self._may_deliver(key, message.message_id):
            # Behind a nacked message of its key: it comes again after that one, in order.
            message.nack()
            return
        if self._post(message):
            message.ack()
            return
        if not key:
            message.nack()  # the emulator applies the retry policy's backoff
            return
        with self._lock:
            self._blocked[key] = message.message_id
        # Held (its lease kept by the client) through the backoff, then nacked: the emulator
        # would deliver it again at once. Its key's later messages wait behind it meanwhile.
        timer = threading.Timer(self.route.backoff(message.delivery_attempt or 1), message.nack)
        timer.daemon = True
        timer.start()

    def _may_deliver(self, key: str, message_id: str) -> bool:
        with self._lock:
            blocker = self._blocked.get(key)
            if blocker is None:
                return True
            if blocker == message_id:  # the nacked message itself, come again
                del self._blocked[key]
                return True
            return False

    def _post(self, message: Message) -> bool:
        route = self.route
        body = push_body(message, route.subscription, dead_letter=route.dead_letter)
        try:
            response = self._http.post(
                route.endpoint,
                content=json.dumps(body).encode(),
                headers={"Content-Type": "application/json", "User-Agent": USER_AGENT},
                timeout=route.ack_deadline_seconds,
            )
        except httpx.HTTPError as error:
            log.info("%s: %s nacked: %s", route.subscription, message.message_id, error)
            return False
        if response.status_code in ACK_STATUSES:
            return True
        log.info("%s: %s nacked: HTTP %s", route.subscription, message.message_id,
                 response.status_code)  # fmt: skip
        return False


class PushRelay:
    """Every route of a deployment, on one Pub/Sub client and one HTTP client."""

    def __init__(self, routes: list[Route]) -> None:
        self._subscriber = pubsub_v1.SubscriberClient()
        connections = sum(r.in_flight for r in routes)
        self._http = httpx.Client(
            limits=httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
        )
        self.relays = [Relay(r, subscriber=self._subscriber, http=self._http) for r in routes]

    def start(self) -> None:
        for relay in self.relays:
            relay.start()

    def stop(self) -> None:
        for relay in self.relays:
            relay.stop()
        self._subscriber.close()
        self._http.close()


def main(argv: list[str]) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    routes = [Route.from_dict(r) for r in json.loads(Path(argv[0]).read_text())]
    relay = PushRelay(routes)
    stopped = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stopped.set())
    relay.start()
    log.info("relaying %d subscriptions", len(routes))
    stopped.wait()
    relay.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
