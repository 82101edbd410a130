"""WhatsApp Cloud API webhooks: the handshake, the signature, and the events a delivery holds.

Meta signs each POST with `X-Hub-Signature-256: sha256=<hex HMAC-SHA256 of the raw body, keyed by
the app secret>`. One delivery may carry several entries, each with several changes, each with
messages, statuses and errors. Sluice turns it into one event per message, status or error, so
that each is processed, de-duplicated and retried on its own.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sluice.domain.errors import FieldError, Invalid, Refused, Unauthenticated

SIGNATURE_PREFIX = "sha256="

# Message types Meta documents today. Any other type is kept and passed on, not rejected: Meta
# adds types, and a webhook that refuses one is re-sent for days.
KNOWN_MESSAGE_TYPES = frozenset(
    {
        "text", "image", "audio", "video", "document", "sticker", "location", "contacts",
        "interactive", "button", "reaction", "order", "system", "unsupported", "unknown",
    }
)  # fmt: skip
# Types that get an AI reply: what a person wrote or sent.
REPLYABLE_TYPES = frozenset(
    {"text", "image", "audio", "video", "document", "sticker", "location", "contacts",
     "interactive", "button", "order"}
)  # fmt: skip
STATUS_RANK = {"sent": 1, "delivered": 2, "read": 3}


def verify_handshake(params: dict[str, str], verify_token: str) -> str:
    """Meta's GET: `hub.mode=subscribe` and the right `hub.verify_token` echo `hub.challenge`."""
    token = params.get("hub.verify_token", "")
    if params.get("hub.mode") != "subscribe" or not hmac.compare_digest(
        token.encode(), verify_token.encode()
    ):
        raise Refused("verification token mismatch")
    return params.get("hub.challenge", "")


def sign(body: bytes, app_secret: str) -> str:
    return SIGNATURE_PREFIX + hmac.new(app_secret.encode(), body, hashlib.sha256).hexdigest()


def check_signature(body: bytes, header: str | None, app_secret: str) -> None:
    if not header:
        raise Unauthenticated("missing X-Hub-Signature-256")
    if not header.startswith(SIGNATURE_PREFIX) or len(header) != len(SIGNATURE_PREFIX) + 64:
        raise Unauthenticated("malformed X-Hub-Signature-256")
    if not hmac.compare_digest(header.encode(), sign(body, app_secret).encode()):
        raise Unauthenticated("X-Hub-Signature-256 does not match the body")


@dataclass(frozen=True)
class WhatsAppEvent:
    """One message, status or error of a delivery, with where it came from."""

    kind: str  # "message" | "status" | "error"
    phone_number_id: str
    display_phone_number: str
    waba_id: str
    body: dict[str, Any]
    contact: dict[str, Any] | None = None
    ordering_key: str = field(default="")

    def to_message(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "phone_number_id": self.phone_number_id,
            "display_phone_number": self.display_phone_number,
            "waba_id": self.waba_id,
            "body": self.body,
            "contact": self.contact,
        }


def _list(value: Any, where: str) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise _bad(where, "must be a list")
    return value


def _dict(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _bad(where, "must be an object")
    return value


def _bad(where: str, message: str) -> Invalid:
    return Invalid("Invalid webhook payload", errors=[FieldError(where, message)])


def events_of(payload: Any) -> list[WhatsAppEvent]:
    """Every message, status and error of a `whatsapp_business_account` delivery, in order."""
    payload = _dict(payload, "body")
    if payload.get("object") != "whatsapp_business_account":
        raise _bad("object", "must be 'whatsapp_business_account'")
    events: list[WhatsAppEvent] = []
    for e, entry in enumerate(_list(payload.get("entry"), "entry")):
        entry = _dict(entry, f"entry.{e}")
        for c, change in enumerate(_list(entry.get("changes"), f"entry.{e}.changes")):
            where = f"entry.{e}.changes.{c}"
            change = _dict(change, where)
            value = _dict(change.get("value", {}), f"{where}.value")
            if change.get("field", "messages") != "messages":
                continue  # account updates, templates, ...: not conversation traffic
            metadata = _dict(value.get("metadata", {}), f"{where}.value.metadata")
            phone_id = str(metadata.get("phone_number_id") or "")
            if not phone_id:
                raise _bad(f"{where}.value.metadata.phone_number_id", "is required")
            display = str(metadata.get("display_phone_number") or "")
            waba = str(entry.get("id") or "")

            source = (phone_id, display, waba)

            contacts = {
                str(c.get("wa_id")): c
                for c in _list(value.get("contacts"), f"{where}.value.contacts")
                if isinstance(c, dict)
            }
            for m, msg in enumerate(_list(value.get("messages"), f"{where}.value.messages")):
                msg = _dict(msg, f"{where}.value.messages.{m}")
                if not isinstance(msg.get("id"), str) or not isinstance(msg.get("from"), str):
                    raise _bad(f"{where}.value.messages.{m}", "needs a string id and from")
                events.append(
                    WhatsAppEvent(
                        "message",
                        *source,
                        msg,
                        contacts.get(msg["from"]),
                        conversation_key(phone_id, msg["from"]),
                    )
                )
            for s, status in enumerate(_list(value.get("statuses"), f"{where}.value.statuses")):
                status = _dict(status, f"{where}.value.statuses.{s}")
                if not isinstance(status.get("id"), str) or not isinstance(
                    status.get("status"), str
                ):
                    raise _bad(f"{where}.value.statuses.{s}", "needs a string id and status")
                recipient = str(status.get("recipient_id") or "")
                events.append(
                    WhatsAppEvent(
                        "status", *source, status, None, conversation_key(phone_id, recipient)
                    )
                )
            for r, error in enumerate(_list(value.get("errors"), f"{where}.value.errors")):
                body = _dict(error, f"{where}.value.errors.{r}")
                events.append(WhatsAppEvent("error", *source, body, None, phone_id))
    return events


def should_reply(message: dict[str, Any], display_phone_number: str) -> bool:
    """Only what a person sent gets a reply: never a reaction, a system notice, an unknown or
    unsupported type, or a message from the business's own number."""
    sender = str(message.get("from", ""))
    if display_phone_number and _digits(sender) == _digits(display_phone_number):
        return False
    return message.get("type") in REPLYABLE_TYPES


def _digits(number: str) -> str:
    return "".join(ch for ch in number if ch.isdigit())


def advance_status(current: str | None, incoming: str) -> str:
    """Statuses arrive in any order; a message's status only moves forward (sent < delivered <
    read). `failed` replaces a status that has not been delivered, and is never replaced."""
    if current is None:
        return incoming
    if current == "failed":
        return current
    if incoming == "failed":
        return current if STATUS_RANK.get(current, 0) >= STATUS_RANK["delivered"] else incoming
    if STATUS_RANK.get(incoming, 0) > STATUS_RANK.get(current, 0):
        return incoming
    return current


def message_text(message: dict[str, Any]) -> str:
    """What the AI provider is asked about: the text a person sent, or a description of it."""
    kind = message.get("type", "unknown")
    content = message.get(kind)
    if kind == "text" and isinstance(content, dict):
        return str(content.get("body", ""))
    if kind == "interactive" and isinstance(content, dict):
        reply = content.get("button_reply") or content.get("list_reply") or {}
        return str(reply.get("title", "")) if isinstance(reply, dict) else ""
    if kind == "button" and isinstance(content, dict):
        return str(content.get("text", ""))
    if isinstance(content, dict) and content.get("caption"):
        return f"[{kind}] {content['caption']}"
    return f"[{kind}]"


def message_time(message: dict[str, Any], fallback: datetime) -> datetime:
    """When the user sent it (Meta's `timestamp`, epoch seconds as a string)."""
    try:
        return datetime.fromtimestamp(int(message["timestamp"]), UTC)
    except (KeyError, TypeError, ValueError, OverflowError, OSError):
        return fallback


def daily_job_id(tenant: str, phone_number_id: str, sent_at: datetime) -> str:
    """A phone number's inbound messages form one job per (UTC) day of sending: a message Meta
    re-sends days later still lands in the same job, where it is recognised. The job is the
    tenant's: once a number moves to another tenant, its messages go to that tenant's job."""
    return f"wa-{tenant}-{phone_number_id}-{sent_at:%Y%m%d}"


def inbound_input(message: dict[str, Any], contact: dict[str, Any] | None) -> dict[str, Any]:
    """What an item of a WhatsApp job holds: who wrote, what, and the message as Meta sent it."""
    profile = (contact or {}).get("profile") or {}
    return {
        "message_id": message["id"],
        "from": message["from"],
        "name": profile.get("name") if isinstance(profile, dict) else None,
        "type": message.get("type", "unknown"),
        "text": message_text(message),
        "message": message,
    }


def conversation_key(phone_id: str, user: str) -> str:
    """The ordering key of a conversation's events: one business number and one user."""
    return f"{phone_id}:{user}"


def message_again(phone_id: str, item_input: dict[str, Any]) -> WhatsAppEvent:
    """A user's message as stored on its item, as the event that brings it to the processor
    again (retry-failed): it goes through the WhatsApp path, and gets its reply."""
    contact = {"wa_id": item_input["from"], "profile": {"name": item_input.get("name")}}
    return WhatsAppEvent(
        "message",
        phone_id,
        "",
        "",
        item_input["message"],
        contact,
        conversation_key(phone_id, item_input["from"]),
    )
