"""Pub/Sub push, as the processor receives it: the envelope decoded into one `Delivery`, handed
to the handler of the subscription it came through, and the outcome answered the way Pub/Sub
understands it (see sluice.outcomes).

The envelope is decoded here, as Cloud Run's Pub/Sub samples do, rather than by
functions-framework's CloudEvent conversion, which drops `subscription`, `deliveryAttempt` and
`orderingKey`. Pub/Sub takes 102, 200, 201, 202 and 204 as an acknowledgement and anything else
as a nack, after which the message comes again on the subscription's backoff.
"""

from __future__ import annotations

import base64
import binascii
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import flask
from pydantic import ValidationError

from sluice.outcomes import Ack, Defer, Fail, Redeliver

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PubSubMessage:
    data: bytes
    attributes: dict[str, str]
    message_id: str
    ordering_key: str = ""


@dataclass(frozen=True)
class Delivery:
    # The subscription's name as topology.yaml declares it (the deployment's prefix removed).
    subscription: str
    message: PubSubMessage
    # Which delivery of the message this is; Pub/Sub counts only where a dead-letter policy is set.
    attempt: int | None = None


class BadDelivery(ValueError):
    """Not a Pub/Sub push body: nothing in it can ever be processed."""


def decode_push(body: Any, *, prefix: str = "") -> Delivery:
    """`{"message": {...}, "subscription": "projects/P/subscriptions/S", "deliveryAttempt": n}`"""
    if not isinstance(body, dict) or not isinstance(body.get("message"), dict):
        raise BadDelivery("not a Pub/Sub push body")
    message, subscription = body["message"], body.get("subscription")
    if not isinstance(subscription, str) or "/subscriptions/" not in subscription:
        raise BadDelivery("the push body names no subscription")
    name = subscription.rsplit("/subscriptions/", 1)[1]
    try:
        data = base64.b64decode(message.get("data") or "", validate=True)
    except (binascii.Error, TypeError, ValueError):
        raise BadDelivery("message data is not base64") from None
    attributes = message.get("attributes") or {}
    attempt = body.get("deliveryAttempt")
    return Delivery(
        subscription=name.removeprefix(prefix),
        message=PubSubMessage(
            data=data,
            attributes={str(k): str(v) for k, v in dict(attributes).items()},
            message_id=str(message.get("messageId") or message.get("message_id") or ""),
            ordering_key=str(message.get("orderingKey") or ""),
        ),
        attempt=attempt if isinstance(attempt, int) else None,
    )


Handler = Callable[[Delivery], Ack]


@dataclass(frozen=True)
class PushEndpoint:
    """One function's push subscriptions, each with its handler (checked against topology.yaml
    when the function starts: see sluice.bootstrap)."""

    handlers: Mapping[str, Handler]
    # Publishes a deferred delivery's message again, to the topic of its subscription.
    republish: Callable[[Delivery], None]
    prefix: str = ""

    def __call__(self, request: flask.Request) -> flask.Response:
        try:
            delivery = decode_push(request.get_json(silent=True), prefix=self.prefix)
        except BadDelivery as exc:
            # Redelivery cannot make it readable: acknowledge.
            log.error("acknowledging an undecodable push to %s: %s", request.path, exc)
            return _ack("undecodable")
        handler = self.handlers.get(delivery.subscription)
        if handler is None:
            # Redelivery cannot fix a subscription pushed to the wrong function: acknowledge.
            log.error("no handler for subscription %r (message %s)", delivery.subscription,
                      delivery.message.message_id)  # fmt: skip
            return _ack("no handler")
        try:
            ack = handler(delivery)
        except ValidationError as exc:
            # The fields at fault, without their values: a message may carry what a customer
            # wrote. Redelivery cannot make it readable: acknowledge.
            fields = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
            log.error("unreadable message %s acknowledged: %s", delivery.message.message_id, fields)
            return _ack("unreadable")
        except Defer as deferred:
            # Acknowledged and published again, at the back of the queue: waiting for capacity
            # never counts as a delivery attempt, and never slows the subscription with nacks.
            self.republish(delivery)
            log.info("%s deferred: %s", delivery.message.message_id, deferred.reason)
            return _ack("deferred")
        except Redeliver as again:
            log.info("%s to be delivered again: %s", delivery.message.message_id, again.reason)
            return flask.Response(again.reason, status=503, mimetype="text/plain")
        except Fail as failed:
            log.error("%s failed for good, acknowledged: %s", delivery.message.message_id,
                      failed.reason)  # fmt: skip
            return _ack("failed")
        log.info("%s", ack)
        return _ack(ack.state)


def _ack(what: str) -> flask.Response:
    return flask.Response(what, status=200, mimetype="text/plain")
