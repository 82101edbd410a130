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
An intake nobody finishes (a 503 never retried) is the sweeper's: one whose items are all written
is published; one left half-written past a declared time is marked `abandoned` (the items it has
are not the whole batch, and only the caller has the rest). Neither counts as anyone's backlog;
a retry with the same key and body still takes an abandoned intake over and finishes it.
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
    ABANDONED = "abandoned"

    @property
    def rank(self) -> int:
        # How far it got: an abandoned intake got no further than writing.
        return {"writing": 0, "items_written": 1, "published": 2, "abandoned": 0}[self.value]


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
    if lease_live(stored, now) and stored.owner != owner:
        assert stored.until is not None
        return InFlight(min(retry_after, whole_seconds(stored.until - now)))
    if stored.stage is Stage.ABANDONED:
        # The caller came back after all: write what is missing, as the first request would.
        fields = {**lease_fields(owner, now=now, lease=lease), "intake": Stage.WRITING.value}
        return Own(Stage.WRITING, fields)
    return Own(stored.stage, lease_fields(owner, now=now, lease=lease))


def lease_live(stored: IntakeRecord, now: datetime) -> bool:
    return stored.owner is not None and stored.until is not None and stored.until > now


class Stale(StrEnum):
    """What the sweeper does with an intake nobody is finishing."""

    PUBLISH = "publish"  # every item is written: publish them, as the owner would have
    ABANDON = "abandon"  # half-written for too long: only the caller has the rest


def stale(
    stored: IntakeRecord, *, updated_at: datetime, now: datetime, abandon_after: timedelta
) -> Stale | None:
    """None while an owner holds the intake, or while a half-written one may still be retried."""
    if lease_live(stored, now):
        return None
    if stored.stage is Stage.ITEMS_WRITTEN:
        return Stale.PUBLISH
    if stored.stage is Stage.WRITING and now - updated_at >= abandon_after:
        return Stale.ABANDON
    return None


def abandon(stored: IntakeRecord, *, owner: str, now: datetime) -> dict[str, Any] | None:
    """The sweeper, owning a half-written intake, marks it abandoned; None if not the owner."""
    if stored.owner != owner:
        return None
    return {"intake": Stage.ABANDONED.value, "intake_lease": None, "updated_at": now}


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
