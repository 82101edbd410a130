"""Completion callbacks to the CRM, signed in the style of Standard Webhooks.

Headers: `webhook-id` (the same for every retry of one completion, so the receiver can drop
repeats), `webhook-timestamp` (epoch seconds), and `webhook-signature: v1,<base64 HMAC-SHA256 of
"{id}.{timestamp}.{body}">`, keyed by the tenant's signing secret (`whsec_` + base64 key bytes).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import json
import secrets
from typing import Any
from urllib.parse import urlsplit

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


# Names that reach the machine itself or the cloud's metadata server, whatever DNS says.
_LOCAL_NAMES = ("localhost", "metadata", "metadata.google.internal")
_LOCAL_SUFFIXES = (".localhost", ".internal")


def address_refusal(address: str, *, allow_loopback: bool) -> str | None:
    """Why a callback may not go to the IP `address`, or None. Only public addresses are
    allowed: a callback URL is the caller's to choose, and must not reach into our network
    (private ranges, link-local with the metadata server at 169.254.169.254, loopback)."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return f"{address!r} is not an IP address"
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if ip.is_loopback:
        return None if allow_loopback else f"{ip} is a loopback address"
    if not ip.is_global or ip.is_multicast:
        return f"{ip} is not a public address (private, link-local, metadata or reserved)"
    return None


def callback_url_refusal(url: str, *, allow_loopback: bool) -> str | None:
    """Why `url` may not be a callback URL, or None: it must be https to a public host; plain
    http only to a loopback address, and loopback only where `allow_loopback` (the local cloud).
    A host name is checked again at send time, once resolved (`address_refusal`)."""
    parts = urlsplit(url)
    host = (parts.hostname or "").rstrip(".").lower()
    if parts.scheme not in ("https", "http") or not host:
        return "must be an https URL"
    try:
        ipaddress.ip_address(host.split("%", 1)[0])
        literal = True
    except ValueError:
        literal = False
    if literal:
        refused = address_refusal(host, allow_loopback=allow_loopback)
        if refused:
            return refused
        loopback = ipaddress.ip_address(host.split("%", 1)[0]).is_loopback
    elif host in _LOCAL_NAMES or host.endswith(_LOCAL_SUFFIXES):
        if not (allow_loopback and (host == "localhost" or host.endswith(".localhost"))):
            return f"{host} is a local or metadata host"
        loopback = True
    else:
        loopback = False
    if parts.scheme == "http" and not (allow_loopback and loopback):
        return "must be https (plain http only to loopback, in the local cloud)"
    return None
