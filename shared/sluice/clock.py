"""The one clock every function reads: aware UTC, as Firestore stores and returns times."""

from __future__ import annotations

from datetime import UTC, datetime


def now() -> datetime:
    return datetime.now(UTC)
