"""Page tokens for item listings: opaque to the caller, the last document id to us."""

from __future__ import annotations

import base64
import binascii

from sluice.domain.errors import FieldError, Invalid
from sluice.domain.firestore_values import document_id_refusal


def encode_token(last_id: str) -> str:
    return base64.urlsafe_b64encode(last_id.encode()).decode().rstrip("=")


def decode_token(token: str | None) -> str | None:
    if not token:
        return None
    try:
        padded = token + "=" * (-len(token) % 4)
        last_id = base64.b64decode(padded.encode(), altchars=b"-_", validate=True).decode()
        if document_id_refusal(last_id):
            raise ValueError(last_id)
        return last_id
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise Invalid(
            "Invalid page token", errors=[FieldError("page_token", "not a token we issued")]
        ) from None


def page_size(raw: str | None, *, default: int, maximum: int) -> int:
    if raw is None or raw == "":
        return default
    # isdigit() alone admits digits int() refuses, such as "²".
    if not (raw.isascii() and raw.isdigit()) or not 1 <= int(raw) <= maximum:
        raise Invalid(
            "Invalid page size",
            errors=[FieldError("page_size", f"must be a whole number from 1 to {maximum}")],
        )
    return int(raw)
