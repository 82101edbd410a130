"""Completion callbacks to the CRM, signed in the style of Standard Webhooks.

Headers: `webhook-id` (the same for every retry of one completion, so the receiver can drop
repeats), `webhook-timestamp` (epoch seconds), and `webhook-signature: v1,<base64 HMAC-SHA256 of
"{id}.{timestamp}.{body}">`, keyed by the tenant's signing secret (`whsec_` + base64 key bytes).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
from typing import Any

SECRET_PREFIX = "whsec_"


def new_secret() -> str:
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(24)).decode()


def _key(secret: str) -> bytes:
    return base64.b64decode(secret.removeprefix(SECRET_PREFIX))


def signature(secret: str, webhook_id: str, timestamp: int, body: bytes) -> str:
    signed = f"{webhook_id}.{timestamp}.".encode() + body
    digest = hmac.new(_key(secret), signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def verify(secret: str, headers: dict[str, str], body: bytes) -> bool:
    """What a receiver does (and what the tests do): any of the listed signatures matches."""
    expected = signature(
        secret, headers["webhook-id"], int(headers["webhook-timestamp"]), body
    ).encode()
    return any(
        hmac.compare_digest(candidate.encode(), expected)
        for candidate in headers.get("webhook-signature", "").split()
    )


def webhook_id(job_id: str, completion: int) -> str:
    """One id per completion of a job: a batch retried and completed again is a new event."""
    return f"msg_{job_id}_{completion}"


def completed_event(job_id: str, job: dict[str, Any], counts: dict[str, int]) -> bytes:
    return json.dumps(
        {
            "type": "batch.completed",
            "data": {
                "batch_id": job_id,
                "kind": job.get("kind"),
                "state": job.get("state"),
                "total": job.get("total"),
                "counts": counts,
                "completed_at": job.get("completed_at"),
            },
        },
        default=str,
        separators=(",", ":"),
    ).encode()


def signed_headers(secret: str, wid: str, timestamp: int, body: bytes) -> dict[str, str]:
    return {
        "webhook-id": wid,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": signature(secret, wid, timestamp, body),
        "content-type": "application/json",
    }
