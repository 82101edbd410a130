"""Publishing JSON messages to Pub/Sub and waiting until they are durable."""

from __future__ import annotations

import json
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from google.api_core.retry import Retry

from sluice.adapters.request_parts import request_ranges

if TYPE_CHECKING:  # imported by clients.publisher_client, only in functions that publish
    from google.cloud import pubsub_v1  # type: ignore[attr-defined]

    from sluice.push import PubSubMessage

# Pub/Sub's limits for one Publish request: 1,000 messages, 10 MB (less here, for the framing).
PUBLISH_MESSAGES = 1000
PUBLISH_BYTES = 8 * 1024 * 1024
MESSAGE_OVERHEAD = 64  # a message's framing in the request besides its data
# Requests in flight at once for one publish of many messages (gRPC waits without the GIL).
PARALLEL_REQUESTS = 4


class Publisher:
    def __init__(
        self, client: pubsub_v1.PublisherClient, project: str, *, timeout: float, prefix: str = "",
        allowed: frozenset[str] | None = None,
    ) -> None:  # fmt: skip
        self._client = client
        self._project = project
        # The topics this function may publish to (its `publishes` in topology.yaml, all that
        # its service account may publish to in the cloud): another one fails here, locally,
        # not first in the cloud. None: any (tools, tests).
        self._allowed = allowed
        # The topology's topics are named with the deployment's prefix in its project.
        self._prefix = prefix
        # A publish that has not been confirmed by then is treated as Pub/Sub being down.
        self._timeout = timeout
        self._retry = Retry(timeout=timeout)
        # Imported here, as the client is (clients.publisher_client): only where it publishes.
        from google.pubsub_v1.services.publisher import PublisherClient as Gapic
        from google.pubsub_v1.types import PublishRequest, PubsubMessage

        self._gapic, self._request, self._message = Gapic, PublishRequest, PubsubMessage

    def topic_path(self, topic: str) -> str:
        return self._client.topic_path(self._project, f"{self._prefix}{topic}")

    def _publishing_to(self, topic: str) -> str:
        if self._allowed is not None and topic not in self._allowed:
            raise PermissionError(
                f"this function may not publish to {topic!r}: add it to its `publishes` in "
                "topology.yaml (in the cloud its service account may publish only there)"
            )
        return self.topic_path(topic)

    def ping(self, topic: str) -> None:
        """Raises unless Pub/Sub answers for `topic` within the publish timeout. Not retried: a
        health check reports what is true now, and a retrying call would outlive the answer."""
        self._client.get_topic(topic=self.topic_path(topic), retry=None, timeout=self._timeout)

    def republish(self, topic: str, message: PubSubMessage) -> str:
        """A delivered message published again as it came: its data, attributes and key."""
        entry = Outgoing(message.data, message.ordering_key, dict(message.attributes))
        return self._send(self._publishing_to(topic), [entry])[0]

    def publish(
        self, topic: str, messages: Iterable[dict[str, Any]], *, ordering_key: str = ""
    ) -> list[str]:
        return self.publish_keyed(topic, ((m, ordering_key) for m in messages))

    def publish_keyed(
        self, topic: str, messages: Iterable[tuple[dict[str, Any], str]]
    ) -> list[str]:
        """Publish every (message, ordering key) and return their ids once Pub/Sub has stored
        all of them. Messages with the same key are delivered in the order given.

        Raises the publish error if any is not stored: the caller must not report the work as
        accepted. A retried request may store a message twice, as the client's own retries
        may; every consumer takes a message twice as once.
        """
        path = self._publishing_to(topic)
        entries = [Outgoing(json.dumps(m, separators=(",", ":")).encode(), key)
                   for m, key in messages]  # fmt: skip
        return self._send(path, entries)

    def _send(self, path: str, entries: list[Outgoing]) -> list[str]:
        """Straight to the Publish call, in requests of up to 1,000 messages, rather than
        through the client's batching: that builds a wrapper, a future and a retry for each
        message (0.1 ms of CPU apiece, profiled: a second of a 10,000-item submission) and
        hands each batch to a thread, 2 ms of a WhatsApp acknowledgement. Requests go out at
        once when no message has a key; otherwise one after another, each stored before the
        next is sent, which is what keeps a key's messages in order."""
        Gapic, PublishRequest = self._gapic, self._request
        raw_message, raw_request = self._message.pb(), PublishRequest.pb()

        def send(part: range) -> list[str]:
            request = raw_request(topic=path, messages=[
                raw_message(data=e.data, ordering_key=e.key, attributes=e.attributes)
                for e in (entries[n] for n in part)
            ])  # fmt: skip
            # The generated Publish call the client inherits (its own publish() batches).
            answer = Gapic.publish(self._client, request=PublishRequest.wrap(request),
                                   retry=self._retry, timeout=self._timeout)  # fmt: skip
            return list(answer.message_ids)

        sizes = [e.size for e in entries]
        parts = request_ranges(sizes, max_count=PUBLISH_MESSAGES, max_bytes=PUBLISH_BYTES)
        if len(parts) <= 1 or any(e.key for e in entries):
            return [i for part in parts for i in send(part)]
        with ThreadPoolExecutor(min(PARALLEL_REQUESTS, len(parts))) as pool:
            return [i for ids in pool.map(send, parts) for i in ids]


@dataclass(frozen=True)
class Outgoing:
    data: bytes
    key: str = ""
    attributes: dict[str, str] = field(default_factory=dict)

    @property
    def size(self) -> int:
        extra = sum(len(k) + len(v) for k, v in self.attributes.items())
        return len(self.data) + len(self.key) + extra + MESSAGE_OVERHEAD
