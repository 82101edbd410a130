"""A batch's intake: who may write and publish its items, and how far it got.

A CRM whose HTTP client gives up after a few seconds retries with the same Idempotency-Key while
the first request is still writing. Two requests writing and publishing the same items at once
would each be harmless only if every write were create-if-absent, and they would still race on
how far the intake got. So one request at a time owns an intake, under a lease: another request
with the same key finds it in flight (409 with Retry-After, as the IETF Idempotency-Key draft
says), or, once the owner's lease has run out (it died, or answered 503 and let go), takes it over
and finishes it.

The stages, stored on the job as `intake`:
`writing` (items may be partly written, nothing published) -> `items_written` -> `published`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any


class Stage(StrEnum):
    WRITING = "writing"
    ITEMS_WRITTEN = "items_written"
    PUBLISHED = "published"

    @property
    def rank(self) -> int:
        return list(Stage).index(self)


@dataclass(frozen=True)
class IntakeRecord:
    """The parts of a stored job that decide what a submission with its key may do."""

    fingerprint: str
    stage: Stage
    owner: str | None = None
    until: datetime | None = None

    @classmethod
    def from_doc(cls, doc: dict[str, Any]) -> IntakeRecord:
        lease = doc.get("intake_lease") or {}
        return cls(
            fingerprint=str(doc.get("fingerprint")),
            stage=Stage(doc.get("intake", Stage.PUBLISHED.value)),
            owner=lease.get("owner"),
            until=lease.get("until"),
        )


def lease_fields(owner: str, *, now: datetime, lease: timedelta) -> dict[str, Any]:
    return {"intake_lease": {"owner": owner, "until": now + lease}, "updated_at": now}


@dataclass(frozen=True)
class Own:
    """This request owns the intake from `stage` on; `fields` take (or renew) the lease."""

    stage: Stage
    fields: dict[str, Any]


@dataclass(frozen=True)
class Finished:
    """Every item is durable and published: answer as the first request did."""


@dataclass(frozen=True)
class InFlight:
    """Another request owns the intake under a live lease."""

    retry_after: int


@dataclass(frozen=True)
class Mismatch:
    """The key was used before with another body."""


Decision = Own | Finished | InFlight | Mismatch


def decide(
    stored: IntakeRecord,
    *,
    fingerprint: str,
    owner: str,
    now: datetime,
    lease: timedelta,
    retry_after: int,
) -> Decision:
    """What a submission finds when the job of its key exists already. `retry_after`: when to
    ask a request to come back while another owns the intake; sooner if the lease runs out
    sooner (a live owner usually finishes well within its lease)."""
    if stored.fingerprint != fingerprint:
        return Mismatch()
    if stored.stage is Stage.PUBLISHED:
        return Finished()
    if stored.owner not in (None, owner) and stored.until is not None and stored.until > now:
        return InFlight(min(retry_after, whole_seconds(stored.until - now)))
    return Own(stored.stage, lease_fields(owner, now=now, lease=lease))


def whole_seconds(span: timedelta) -> int:
    """At least one whole second: the Retry-After header's unit."""
    return max(1, math.ceil(span.total_seconds()))


def advance(stored: IntakeRecord, *, owner: str, to: Stage, now: datetime,
            lease: timedelta) -> dict[str, Any] | None:  # fmt: skip
    """The owner moves the intake on to `to` and renews its lease; None if it is not the owner
    any more (its lease ran out and another request took over: that one finishes the intake).
    Never moves backwards; once published the lease is gone, nobody needs it."""
    if stored.owner != owner:
        return None
    stage = max(stored.stage, to, key=lambda s: s.rank)
    if stage is Stage.PUBLISHED:
        return {"intake": stage.value, "intake_lease": None, "updated_at": now}
    return {"intake": stage.value, **lease_fields(owner, now=now, lease=lease)}


def release(stored: IntakeRecord, *, owner: str, now: datetime) -> dict[str, Any] | None:
    """The owner gives up (it answers 503): a retry may take over at once. None if not the owner."""
    if stored.owner != owner:
        return None
    return {"intake_lease": None, "updated_at": now}
