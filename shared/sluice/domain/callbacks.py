"""Completion callbacks to the CRM, signed in the style of Standard Webhooks.

Headers: `webhook-id` (the same for every retry of one completion, so the receiver can drop
repeats), `webhook-timestamp` (epoch seconds), and `webhook-signature: v1,<base64 HMAC-SHA256 of
"{id}.{timestamp}.{body}">`, keyed by the tenant's signing secret (`whsec_` + base64 key bytes).

One live delivery per callback. A completion's callback record on its job (`callback`) names the
delivery chain that owns it (`chain`: the Pub/Sub message id, the same at every redelivery of one
message) and when that chain last began a delivery (`delivered_at`); a delivery holds a lease
while calling (`leased_until`), and after a failed attempt the next waits out the subscription's
minimum backoff (`retry_at`: Pub/Sub may redeliver sooner than its policy says). Another message
for the same callback (a sweep's, or a duplicate publish) steps aside while the owning chain is
alive, so the CRM sees attempts only on that chain's retry backoff; once no delivery has begun
for longer than a chain can stay silent, the sweeper sends the callback again (stamping
`sent_again_at`) and the new message takes it over.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import json
import secrets
from datetime import datetime, timedelta
from enum import Enum
from typing import Any
from urllib.parse import urlsplit

from sluice.domain.jobs import CallbackState

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


class Turn(Enum):
    """What a delivery of a completion's callback does, given the job's callback record."""

    SETTLED = "settled"  # sent, failed or superseded by a later completion: acknowledge
    STEP_ASIDE = "step_aside"  # another chain owns it and is alive: acknowledge, send nothing
    # This chain's other delivery is calling, or its last attempt failed less than the
    # subscription's minimum backoff ago: have this one delivered again, later.
    WAIT = "wait"
    SEND = "send"  # take the lease and call the CRM


def pending(callback: dict[str, Any], completion: int) -> bool:
    """Whether the callback of completion `completion` is still to be sent."""
    return (
        callback.get("completion") == completion and callback.get("state") == CallbackState.PENDING
    )


def turn(
    callback: dict[str, Any], *, completion: int, chain: str, now: datetime, quiet: timedelta
) -> Turn:
    if not pending(callback, completion):
        return Turn.SETTLED
    owner, last = callback.get("chain"), callback.get("delivered_at")
    leased = callback.get("leased_until") is not None and callback["leased_until"] > now
    alive = leased or (last is not None and last > now - quiet)
    if owner is not None and owner != chain and alive:
        return Turn.STEP_ASIDE
    early = callback.get("retry_at") is not None and callback["retry_at"] > now
    return Turn.WAIT if leased or early else Turn.SEND


def needs_sending_again(
    callback: dict[str, Any], *, completed_at: datetime | None, now: datetime, quiet: timedelta
) -> bool:
    """A pending callback no chain has touched for `quiet`: its message was lost (a publish
    after the completion failed), so nothing will ever deliver it unless it is sent again."""
    if callback.get("state") != CallbackState.PENDING:
        return False
    stamps = [completed_at, callback.get("delivered_at"), callback.get("sent_again_at")]
    known = [t for t in stamps if t is not None]
    return bool(known) and max(known) < now - quiet
