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
target function's local instances serve (instances x threads), pulling only for the slots free
(a streaming pull would lease messages ahead, and a relay stopped would leave them leased until
their ack deadline), and at most one per ordering key, in order: a nacked message holds its
key's later messages back (they are nacked too, unsent) until it comes again, after the retry
policy's backoff, which the emulator does not apply on an ordered pull subscription.

The functions cannot tell it from push: the same path, body and headers.

`python -m localcloud.push_relay CONFIG.json` relays every subscription the file lists.
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import signal
import sys
import threading
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC
from pathlib import Path
from typing import Any

import httpx
from google.api_core.exceptions import (
    Cancelled,
    DeadlineExceeded,
    GoogleAPICallError,
    ServiceUnavailable,
)
from google.cloud import pubsub_v1  # type: ignore[attr-defined]

log = logging.getLogger("localcloud.push_relay")

# What Pub/Sub push takes as an acknowledgement; anything else is a nack.
ACK_STATUSES = frozenset({102, 200, 201, 202, 204})
# How long one pull waits for messages when there are none (the emulator holds it meanwhile).
PULL_SECONDS = 5.0
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
    # The subscription's retry policy, which the relay applies itself where the emulator does
    # not: on an ordered pull subscription it delivers a nacked message again at once.
    minimum_backoff_seconds: float = 10.0
    maximum_backoff_seconds: float = 600.0

    def backoff(self, attempt: int) -> float:
        """The retry policy's wait after the `attempt`th delivery failed: exponential from the
        minimum, capped at the maximum."""
        return min(self.maximum_backoff_seconds,
                   self.minimum_backoff_seconds * 2 ** max(attempt - 1, 0))  # fmt: skip


def push_body(received: Any, subscription: str, *, dead_letter: bool) -> dict[str, Any]:
    """The JSON body Pub/Sub push POSTs for a pulled `ReceivedMessage` (both spellings of the id
    and time, as production push sends them)."""
    message = received.message
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
    if dead_letter and received.delivery_attempt:
        body["deliveryAttempt"] = received.delivery_attempt
    return body


class Relay:
    """One subscription: pulled only for the slots free (`in_flight` in all, a message pulled
    holds one until it is answered), each message POSTed by a thread of the relay's pool, one
    at a time per ordering key. Nothing is pulled ahead: stopped, it leaves nothing leased."""

    def __init__(
        self, route: Route, *, subscriber: pubsub_v1.SubscriberClient, http: httpx.Client
    ) -> None:
        self.route = route
        self._subscriber = subscriber
        self._http = http
        self._lock = threading.Lock()
        self._free = route.in_flight
        self._freed = threading.Condition(self._lock)
        # Ordering key -> its messages pulled and not yet answered, the head in flight.
        self._keys: dict[str, deque[Any]] = {}
        # Ordering key -> the id of the nacked message its later messages wait behind.
        self._blocked: dict[str, str] = {}
        self._stopping = threading.Event()
        self._pool: ThreadPoolExecutor | None = None
        self._puller: threading.Thread | None = None

    def start(self) -> None:
        self._stopping.clear()
        self._pool = ThreadPoolExecutor(self.route.in_flight, thread_name_prefix="push")
        self._puller = threading.Thread(target=self._pull_loop, daemon=True, name="pull")
        self._puller.start()
        threading.Thread(target=self._keep_leases, daemon=True, name="lease").start()

    def stop(self) -> None:
        """Pull no more, let the deliveries under way end, and hand back (nack) what waits
        behind them: everything undelivered is back in the subscription when this returns."""
        self._stopping.set()
        if self._puller is not None:
            self._puller.join()
        waiting: list[Any] = []
        with self._lock:
            for queue in self._keys.values():
                while len(queue) > 1:
                    waiting.append(queue.pop())
        self._modack(waiting, 0)
        if self._pool is not None:
            self._pool.shutdown(wait=True)
        self._keys.clear()

    # -- pulling ----------------------------------------------------------------------------------

    def _pull_loop(self) -> None:
        route = self.route
        while not self._stopping.is_set():
            with self._freed:
                while self._free == 0 and not self._stopping.is_set():
                    self._freed.wait(0.5)
                wanted, self._free = self._free, 0
            if self._stopping.is_set():
                self._release(wanted)
                return
            try:
                pulled = self._subscriber.pull(
                    subscription=route.subscription, max_messages=wanted, timeout=PULL_SECONDS,
                    retry=None,
                ).received_messages  # fmt: skip
            except (DeadlineExceeded, ServiceUnavailable, Cancelled):
                pulled = []
            except GoogleAPICallError as error:  # the subscription is gone: the deployment stops
                log.warning("%s: pull failed: %s", route.subscription, error)
                pulled = []
                self._stopping.wait(1)
            self._release(wanted - len(pulled))
            if self._stopping.is_set():
                self._modack(list(pulled), 0)
                self._release(len(pulled))
                return
            for received in pulled:
                self._admit(received)

    def _release(self, slots: int) -> None:
        if slots:
            with self._freed:
                self._free += slots
                self._freed.notify_all()

    def _admit(self, received: Any) -> None:
        key = received.message.ordering_key
        if key:
            with self._lock:
                blocker = self._blocked.get(key)
                behind = blocker is not None and blocker != received.message.message_id
                if not behind:
                    self._blocked.pop(key, None)
                    queue = self._keys.setdefault(key, deque())
                    queue.append(received)
                    if len(queue) > 1:
                        return  # waits behind its key's message in flight
            if behind:
                # Behind a nacked message of its key: it comes again after that one, in order.
                self._modack([received], 0)
                self._release(1)
                return
        assert self._pool is not None
        self._pool.submit(self._deliver, received)

    # -- delivering -------------------------------------------------------------------------------

    def _deliver(self, received: Any) -> None:
        acked = self._post(received)
        key = received.message.ordering_key
        if acked:
            self._ack(received)
        elif not key:
            self._modack([received], 0)  # the emulator applies the retry policy's backoff
        self._release(1)
        if not key:
            return
        with self._lock:
            queue = self._keys.get(key, deque())
            if queue:
                queue.popleft()
            following = list(queue)
            if not acked:
                # Its key's later messages go back too, to come again after it, in order.
                self._blocked[key] = received.message.message_id
                queue.clear()
            if not queue:
                self._keys.pop(key, None)
        if acked:
            if following:
                try:
                    assert self._pool is not None
                    self._pool.submit(self._deliver, following[0])
                except RuntimeError:  # stopping: it goes back to the subscription
                    self._modack(following[:1], 0)
            return
        self._modack(following, 0)
        self._release(len(following))
        # Held through the retry policy's backoff, then nacked: on an ordered subscription the
        # emulator would deliver it again at once.
        timer = threading.Timer(self.route.backoff(received.delivery_attempt or 1),
                                self._modack, args=([received], 0))  # fmt: skip
        timer.daemon = True
        timer.start()

    def _post(self, received: Any) -> bool:
        route, message_id = self.route, received.message.message_id
        body = push_body(received, route.subscription, dead_letter=route.dead_letter)
        try:
            response = self._http.post(
                route.endpoint,
                content=json.dumps(body).encode(),
                headers={"Content-Type": "application/json", "User-Agent": USER_AGENT},
                timeout=route.ack_deadline_seconds,
            )
        except httpx.HTTPError as error:
            log.info("%s: %s nacked: %s", route.subscription, message_id, error)
            return False
        if response.status_code in ACK_STATUSES:
            return True
        log.info("%s: %s nacked: HTTP %s", route.subscription, message_id, response.status_code)
        return False

    def _ack(self, received: Any) -> None:
        with contextlib.suppress(GoogleAPICallError):
            self._subscriber.acknowledge(subscription=self.route.subscription,
                                         ack_ids=[received.ack_id])  # fmt: skip

    def _modack(self, messages: list[Any], seconds: int) -> None:
        if messages:
            with contextlib.suppress(GoogleAPICallError):
                self._subscriber.modify_ack_deadline(
                    subscription=self.route.subscription,
                    ack_ids=[m.ack_id for m in messages], ack_deadline_seconds=seconds,
                )  # fmt: skip

    def _keep_leases(self) -> None:
        """The messages waiting behind their key's message in flight keep their lease, as push
        would not have sent them yet."""
        every = max(self.route.ack_deadline_seconds / 3, 1)
        while not self._stopping.wait(every):
            with self._lock:
                waiting = [m for queue in self._keys.values() for m in list(queue)[1:]]
            self._modack(waiting, self.route.ack_deadline_seconds)


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
        """Every subscription at once: pull no more, let the deliveries under way end, and hand
        back what was held undelivered."""
        with ThreadPoolExecutor(len(self.relays) or 1) as pool:
            list(pool.map(lambda relay: relay.stop(), self.relays))
        self._subscriber.close()
        self._http.close()


def main(argv: list[str]) -> int:
    """Relays until SIGTERM or SIGINT, then stops as `PushRelay.stop` does: the deliveries under
    way end, and what it held undelivered goes back to the subscriptions."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    routes = [Route(**r) for r in json.loads(Path(argv[0]).read_text())]
    relay = PushRelay(routes)
    stopped = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stopped.set())
    relay.start()
    log.info("relaying %d subscriptions", len(routes))
    while not stopped.wait(0.5):  # wakes for the signal handlers
        pass
    relay.stop()
    log.info("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
