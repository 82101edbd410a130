"""Publishing JSON messages to Pub/Sub and waiting until they are durable."""

from __future__ import annotations

import json
from collections.abc import Iterable
from concurrent import futures
from typing import TYPE_CHECKING, Any

from google.api_core.retry import Retry

if TYPE_CHECKING:  # imported by clients.publisher_client, only in functions that publish
    from google.cloud import pubsub_v1  # type: ignore[attr-defined]

    from sluice.push import PubSubMessage


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
        self._retry = Retry(timeout=timeout)  # built once: publish runs per message

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
        future = self._client.publish(
            self._publishing_to(topic), message.data, ordering_key=message.ordering_key,
            retry=self._retry, timeout=self._timeout, **message.attributes,
        )  # fmt: skip
        result: str = future.result(timeout=self._timeout)
        return result

    def publish(
        self, topic: str, messages: Iterable[dict[str, Any]], *, ordering_key: str = ""
    ) -> list[str]:
        return self.publish_keyed(topic, ((m, ordering_key) for m in messages))

    def publish_keyed(
        self, topic: str, messages: Iterable[tuple[dict[str, Any], str]]
    ) -> list[str]:
        """Publish every (message, ordering key) and return their ids once Pub/Sub has stored
        all of them. Messages with the same key are delivered in the order given.

        Raises the publish error (or TimeoutError) if any is not confirmed: the caller must not
        report the work as accepted.
        """
        path = self._publishing_to(topic)
        pending = [
            (
                key,
                self._client.publish(
                    path,
                    json.dumps(message, separators=(",", ":")).encode(),
                    ordering_key=key,
                    # Retried only as long as the caller waits: past that the work is reported
                    # as not accepted, and a publish still retrying behind it (by default for
                    # up to 10 minutes) would outlive the request.
                    retry=self._retry,
                    timeout=self._timeout,
                ),
            )
            for message, key in messages
        ]
        _, not_done = futures.wait([f for _, f in pending], timeout=self._timeout)
        failed = not_done | {f for _, f in pending if f.done() and f.exception() is not None}
        if failed:
            for key, future in pending:
                if future in failed:
                    future.cancel()
                    if key:
                        # A failed publish pauses its key; the sender's retry must find it open.
                        self._client.resume_publish(path, key)
            if not_done:
                raise TimeoutError(f"{len(not_done)} messages to {topic} were not confirmed")
        return [future.result() for _, future in pending]
