"""Accepting a WhatsApp Cloud API webhook delivery: verify, split into events, publish, answer.

Meta re-sends anything not answered 200 quickly, for up to 7 days; so this does no work beyond
the signature check and one publish, and answers 200 only once every event is durable in Pub/Sub.
"""

from __future__ import annotations

from sluice.adapters.publisher import Publisher
from sluice.domain.whatsapp import check_signature, events_of
from sluice.http import read_json
from sluice.messages import WHATSAPP_EVENTS


def receive_delivery(
    publisher: Publisher, *, body: bytes, signature: str | None, app_secret: str
) -> int:
    """Publish one event per message, status and error, ordered per conversation; return how
    many. A bad signature is a 401 and publishes nothing."""
    check_signature(body, signature, app_secret)
    events = events_of(read_json(body))
    publisher.publish_keyed(WHATSAPP_EVENTS, ((e.to_message(), e.ordering_key) for e in events))
    return len(events)
