"""WhatsApp Cloud API webhook payloads, in the shape Meta documents and sends."""

from __future__ import annotations

import itertools
import json
from typing import Any

from sluice.domain.whatsapp import sign

_ids = itertools.count(1)


def text_message(sender: str, text: str, wamid: str | None = None) -> dict[str, Any]:
    return {
        "from": sender,
        "id": wamid or f"wamid.HBgLMTY1MDM4Nzk0MzkVAgASGBQzQTRBNjU5OUFFRTA{next(_ids):04d}=",
        "timestamp": "1763700000",
        "text": {"body": text},
        "type": "text",
    }


def status(wamid: str, state: str, recipient: str) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": wamid,
        "status": state,
        "timestamp": "1763700100",
        "recipient_id": recipient,
    }
    if state == "failed":
        error = {"code": 131047, "title": "Re-engagement message", "message": "Re-engagement"}
        body["errors"] = [error]
    return body


def change(
    phone_id: str,
    *,
    messages: list[dict[str, Any]] | None = None,
    statuses: list[dict[str, Any]] | None = None,
    errors: list[dict[str, Any]] | None = None,
    display: str = "15550000001",
) -> dict[str, Any]:
    value: dict[str, Any] = {
        "messaging_product": "whatsapp",
        "metadata": {"display_phone_number": display, "phone_number_id": phone_id},
    }
    if messages:
        value["contacts"] = [
            {"profile": {"name": f"User {m['from']}"}, "wa_id": m["from"]} for m in messages
        ]
        value["messages"] = messages
    if statuses:
        value["statuses"] = statuses
    if errors:
        value["errors"] = errors
    return {"value": value, "field": "messages"}


def delivery(*changes: dict[str, Any], waba: str = "102290129340398") -> dict[str, Any]:
    return {"object": "whatsapp_business_account",
            "entry": [{"id": waba, "changes": list(changes)}]}  # fmt: skip


def signed(payload: dict[str, Any] | bytes, secret: str) -> tuple[bytes, dict[str, str]]:
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    return body, {"X-Hub-Signature-256": sign(body, secret), "Content-Type": "application/json"}
