"""Pub/Sub push bodies as Pub/Sub sends them to the processor, for the functions tests."""

from __future__ import annotations

import base64
from typing import Any

from sluice.topology import load_topology


def subscription_of(topic: str) -> str:
    """The subscription topology.yaml pushes `topic` to the processor through."""
    (name,) = (n for n, s in load_topology().subscriptions.items() if s.topic == topic)
    return name


def push_body(
    data: bytes, *, topic: str = "work-items", message_id: str = "1",
    attributes: dict[str, str] | None = None, project: str = "p",
) -> dict[str, Any]:  # fmt: skip
    return {
        "message": {"data": base64.b64encode(data).decode(), "messageId": message_id,
                    "publishTime": "2026-11-21T00:00:00Z", "attributes": attributes or {}},
        "subscription": f"projects/{project}/subscriptions/{subscription_of(topic)}",
    }  # fmt: skip
