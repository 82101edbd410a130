"""Publishing JSON messages to Pub/Sub and waiting until they are durable."""

from __future__ import annotations

import json
from collections.abc import Iterable
from concurrent import futures
from typing import Any

from google.cloud import pubsub_v1  # type: ignore[attr-defined]


class Publisher:
    def __init__(self, client: pubsub_v1.PublisherClient, project: str, *, timeout: float) -> None:
        self._client = client
        self._project = project
        # A publish that has not been confirmed by then is treated as Pub/Sub being down.
        self._timeout = timeout

    def topic_path(self, topic: str) -> str:
        return self._client.topic_path(self._project, topic)

    def publish(
        self,
        topic: str,
        messages: Iterable[dict[str, Any]],
        *,
        attributes: dict[str, str] | None = None,
        ordering_key: str = "",
    ) -> list[str]:
        """Publish every message and return their ids once Pub/Sub has stored all of them.

        Raises the publish error (or TimeoutError) if any is not confirmed: the caller must not
        report the work as accepted.
        """
        path = self.topic_path(topic)
        pending = [
            self._client.publish(
                path,
                json.dumps(message, separators=(",", ":")).encode(),
                ordering_key=ordering_key,
                **(attributes or {}),
            )
            for message in messages
        ]
        _, not_done = futures.wait(pending, timeout=self._timeout)
        if not_done:
            for future in not_done:
                future.cancel()
            raise TimeoutError(f"{len(not_done)} messages to {topic} were not confirmed in time")
        return [future.result() for future in pending]
