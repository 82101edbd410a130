"""Tenants and their API keys. Keys are shown once and stored only as a SHA-256 digest: they are
long random strings, so a fast hash is safe and lets a request find its tenant with one lookup."""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets

from sluice.domain.errors import Unauthenticated

KEY_PREFIX = "sk_"
_SLUG = re.compile(r"[^a-z0-9]+")


def new_api_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def hash_api_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def tenant_id(name: str) -> str:
    slug = _SLUG.sub("-", name.lower()).strip("-")
    if not slug:
        raise ValueError(f"tenant name {name!r} has no letters or digits")
    return slug[:63]


def bearer_key(authorization: str | None) -> str:
    """The API key of an `Authorization: Bearer <key>` header, or a 401 saying what is wrong."""
    if not authorization:
        raise Unauthenticated("missing Authorization header")
    scheme, _, key = authorization.partition(" ")
    key = key.strip()
    if scheme.lower() != "bearer" or not key:
        raise Unauthenticated("Authorization must be 'Bearer <api key>'")
    if not key.startswith(KEY_PREFIX):
        raise Unauthenticated("not a Sluice API key")
    return key


def same_digest(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode(), b.encode())
