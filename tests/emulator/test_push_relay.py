"""The local cloud's push relay on the Pub/Sub emulator: what a function receives is what Pub/Sub
push sends, at the concurrency the function serves, with the emulator's redelivery and
dead-lettering, one message per ordering key at a time."""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import pytest
from google.api_core.exceptions import DeadlineExceeded
from google.cloud import pubsub_v1  # type: ignore[attr-defined]
from google.protobuf.duration_pb2 import Duration
from google.pubsub_v1.types import DeadLetterPolicy, RetryPolicy

from localcloud.processes import BackgroundServer
from localcloud.push_relay import PushRelay, Route
from sluice.push import decode_push
from testkit.client import wait_for

DATA = Path(__file__).parent.parent / "data"

# (message data, delivery) -> the status to answer; 204 unless the test says otherwise.
Answer = Callable[[bytes, int], int]


class Receiver:
    """A function's push endpoint: records every POST and answers as told."""

    def __init__(self, answer: Answer, *, delay: float = 0.0) -> None:
        self.bodies: list[dict[str, Any]] = []
        self.times: list[float] = []
        self.headers: list[dict[str, str]] = []
        self.acked: list[bytes] = []
        self.in_flight: Counter[str] = Counter()
        self.most_in_flight = 0
        self.most_per_key = 0
        self.keys_overlapped = False
        self._answer, self._delay = answer, delay
        self._lock = threading.Lock()
        self._deliveries: Counter[bytes] = Counter()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                status = receiver.receive(body, dict(self.headers))
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.server = BackgroundServer(Handler)

    def receive(self, body: dict[str, Any], headers: dict[str, str]) -> int:
        delivery = decode_push(body)
        data, key = delivery.message.data, delivery.message.ordering_key or "-"
        with self._lock:
            self.bodies.append(body)
            self.times.append(time.monotonic())
            self.headers.append(headers)
            self._deliveries[data] += 1
            nth = self._deliveries[data]
            self.in_flight[key] += 1
            self.most_in_flight = max(self.most_in_flight, sum(self.in_flight.values()))
            self.most_per_key = max(self.most_per_key, self.in_flight[key])
            self.keys_overlapped |= sum(1 for n in self.in_flight.values() if n) > 1
        time.sleep(self._delay)
        status = self._answer(data, nth)
        with self._lock:
            self.in_flight[key] -= 1
            if status < 300:
                self.acked.append(data)
        return status


@pytest.fixture
def clients(
    local_cloud: Any,
) -> Iterator[tuple[pubsub_v1.PublisherClient, pubsub_v1.SubscriberClient]]:
    publisher = pubsub_v1.PublisherClient(
        publisher_options=pubsub_v1.types.PublisherOptions(enable_message_ordering=True)
    )
    subscriber = pubsub_v1.SubscriberClient()
    yield publisher, subscriber
    subscriber.close()


def relay_to(
    receiver: Receiver, clients: Any, project: str, relays: list[PushRelay], *, in_flight: int = 4,
    ordering: bool = False, max_attempts: int = 5,
) -> Iterator[tuple[str, str]]:  # fmt: skip
    """A topic, its dead-letter topic and a pull subscription with the topology's policies,
    relayed to `receiver`. Yields (topic path, dead-letter subscription path)."""
    publisher, subscriber = clients
    topic, dead = publisher.topic_path(project, "work"), publisher.topic_path(project, "dead")
    publisher.create_topic(name=topic)
    publisher.create_topic(name=dead)
    dead_sub = subscriber.subscription_path(project, "dead-letters")
    subscriber.create_subscription(name=dead_sub, topic=dead)
    subscription = subscriber.subscription_path(project, "work-to-function")
    subscriber.create_subscription(request={
        "name": subscription, "topic": topic, "ack_deadline_seconds": 10,
        "retry_policy": RetryPolicy(minimum_backoff=Duration(seconds=1),
                                    maximum_backoff=Duration(seconds=2)),
        "enable_message_ordering": ordering,
        "dead_letter_policy": DeadLetterPolicy(dead_letter_topic=dead,
                                               max_delivery_attempts=max_attempts),
    })  # fmt: skip
    receiver.server.start()
    route = Route(subscription=subscription, endpoint=f"{receiver.server.url}/push",
                  in_flight=in_flight, ack_deadline_seconds=10, dead_letter=True,
                  minimum_backoff_seconds=1,
                  maximum_backoff_seconds=2)  # fmt: skip
    relay = PushRelay([route])
    relay.start()
    relays.append(relay)
    try:
        yield topic, dead_sub
    finally:
        relay.stop()
        receiver.server.stop()


@pytest.fixture
def relayed(clients: Any, project: str) -> Iterator[Callable[..., tuple[str, str]]]:
    started: list[Iterator[Any]] = []
    relays: list[PushRelay] = []

    def start(receiver: Receiver, **kwargs: Any) -> tuple[str, str]:
        run = relay_to(receiver, clients, project, relays, **kwargs)
        started.append(run)
        return next(run)

    start.relays = relays  # type: ignore[attr-defined]
    yield start
    for run in started:
        next(run, None)


def test_a_message_is_posted_as_production_push_sends_it(clients, relayed):
    receiver = Receiver(lambda data, nth: 204)
    topic, _ = relayed(receiver)
    clients[0].publish(
        topic, b'{"job_id": "job-1", "item_id": "item-1"}', type="work-item"
    ).result()
    wait_for(lambda: receiver.acked, timeout=30, what="the push")
    body, saved = receiver.bodies[0], json.loads((DATA / "pubsub-push.json").read_text())
    # The same fields as a body production push sent, each decoded the same way.
    assert body.keys() == saved.keys()
    assert body["message"].keys() == saved["message"].keys()
    got, expected = decode_push(body), decode_push(saved)
    assert (got.message.data, got.message.attributes, got.attempt) == (
        expected.message.data, expected.message.attributes, expected.attempt,
    )  # fmt: skip
    assert got.subscription == "work-to-function"
    assert body["message"]["messageId"] == body["message"]["message_id"] != ""
    assert receiver.headers[0]["Content-Type"] == "application/json"
    assert receiver.headers[0]["User-Agent"].startswith("APIs-Google")
    time.sleep(3)  # an acknowledged message never comes again
    assert len(receiver.bodies) == 1


def test_a_non_2xx_answer_is_redelivered_and_after_max_attempts_dead_lettered(clients, relayed):
    receiver = Receiver(lambda data, nth: 503)
    topic, dead_sub = relayed(receiver, max_attempts=5)
    clients[0].publish(topic, b"always refused").result()
    wait_for(lambda: len(receiver.bodies) >= 5, timeout=60, what="five deliveries")
    assert [b["deliveryAttempt"] for b in receiver.bodies[:5]] == [1, 2, 3, 4, 5]
    dead: list[Any] = []

    def dead_lettered() -> bool:
        try:
            response = clients[1].pull(subscription=dead_sub, max_messages=10, timeout=5,
                                       retry=None)  # fmt: skip
        except DeadlineExceeded:
            return False
        dead.extend(response.received_messages)
        return bool(dead)

    wait_for(dead_lettered, timeout=60, what="the dead letter")
    (message,) = dead
    assert message.message.data == b"always refused"
    assert message.message.attributes["CloudPubSubDeadLetterSourceSubscription"] == (
        "work-to-function"
    )
    assert message.message.attributes["CloudPubSubDeadLetterSourceDeliveryCount"] == "5"
    time.sleep(2)
    assert len(receiver.bodies) == 5  # never delivered again once dead-lettered


def test_a_nacked_message_comes_again_and_then_is_acknowledged(clients, relayed):
    receiver = Receiver(lambda data, nth: 500 if nth == 1 else 200)
    topic, _ = relayed(receiver)
    clients[0].publish(topic, b"refused once").result()
    wait_for(lambda: receiver.acked, timeout=60, what="the second delivery")
    assert [b["deliveryAttempt"] for b in receiver.bodies] == [1, 2]


def test_messages_in_flight_reach_what_the_function_serves_and_never_exceed_it(clients, relayed):
    receiver = Receiver(lambda data, nth: 204, delay=0.5)
    topic, _ = relayed(receiver, in_flight=8)
    futures = [clients[0].publish(topic, f"m{i}".encode()) for i in range(32)]
    for future in futures:
        future.result()
    wait_for(lambda: len(receiver.acked) == 32, timeout=60, what="32 acknowledgements")
    # The emulator's own push would keep two in flight.
    assert receiver.most_in_flight == 8


def test_one_message_per_ordering_key_at_a_time_in_order_even_after_a_nack(clients, relayed):
    # a1 is refused on its first delivery: a2 and a3 must not overtake it.
    receiver = Receiver(lambda data, nth: 503 if (data, nth) == (b"a1", 1) else 204, delay=0.2)
    topic, _ = relayed(receiver, in_flight=8, ordering=True)
    published = [
        clients[0].publish(topic, f"{key}{i}".encode(), ordering_key=key)
        for i in range(4)
        for key in ("a", "b")
    ]
    for future in published:
        future.result()
    wait_for(lambda: len(receiver.acked) == 8, timeout=90, what="every message acknowledged")
    assert receiver.most_per_key == 1
    assert receiver.keys_overlapped  # keys in parallel
    assert [d for d in receiver.acked if d.startswith(b"a")] == [b"a0", b"a1", b"a2", b"a3"]
    assert [d for d in receiver.acked if d.startswith(b"b")] == [b"b0", b"b1", b"b2", b"b3"]
    posted = [
        (decode_push(b).message.data, t)
        for b, t in zip(receiver.bodies, receiver.times, strict=True)
    ]
    posted_a = [(d, t) for d, t in posted if d.startswith(b"a")]
    # Nothing after a1 was posted before a1 came again, after the retry policy's backoff.
    assert [d for d, _ in posted_a[:3]] == [b"a0", b"a1", b"a1"]
    assert posted_a[2][1] - posted_a[1][1] >= 1.0


def test_stopped_it_lets_deliveries_end_and_hands_back_what_it_held(clients, relayed):
    receiver = Receiver(lambda data, nth: 204, delay=0.5)
    topic, _ = relayed(receiver, in_flight=2)
    relay = relayed.relays[-1]  # type: ignore[attr-defined]
    for future in [clients[0].publish(topic, f"m{i}".encode()) for i in range(20)]:
        future.result()
    wait_for(lambda: receiver.acked, timeout=30, what="the first deliveries")
    relay.stop()
    delivered = len(receiver.bodies)
    assert len(receiver.acked) == delivered  # the deliveries under way ended
    # Everything not delivered is back in the subscription at once, for anyone to pull.
    subscription = relay.relays[0].route.subscription
    pulled = clients[1].pull(subscription=subscription, max_messages=100, timeout=10, retry=None)
    assert len(pulled.received_messages) == 20 - delivered
    time.sleep(1)
    assert len(receiver.bodies) == delivered  # nothing delivered once stopped
