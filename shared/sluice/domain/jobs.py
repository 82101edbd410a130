"""Jobs, beside items (sluice.domain.items): their states, the one shape of a new job, and the
decisions on them, as plain functions over plain data. The adapters apply what these return.

A job is a CRM batch (`total` items, known at intake) or a WhatsApp number's day (open-ended: its
items arrive all day, so it never completes). It is `open` while it has work, `completed` when
every item has finished (a retry-failed opens it again), `cancelled` when its caller said so.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any


class JobState(StrEnum):
    OPEN = "open"
    COMPLETED = "completed"
    CANCELLED = "cancelled"


class CallbackState(StrEnum):
    """The completion callback of a job's latest completion."""

    PENDING = "pending"
    SENT = "sent"
    FAILED = "failed"
    NO_CALLBACK_URL = "no_callback_url"


def new_job(
    *,
    tenant: str,
    kind: str,
    params: dict[str, Any],
    total: int,
    at: datetime,
    callback_url: str | None = None,
    fingerprint: str | None = None,
    idempotency_key: str | None = None,
    phone_number_id: str | None = None,
) -> dict[str, Any]:
    """The document of a new job: a batch (with its fingerprint and key), or a WhatsApp day (with
    its phone number: open-ended, its items counted as they arrive)."""
    doc: dict[str, Any] = {
        "tenant": tenant,
        "kind": kind,
        "params": params,
        "callback_url": callback_url,
        "total": total,
        "state": JobState.OPEN.value,
        "created_at": at,
        "updated_at": at,
        "completed_at": None,
    }
    if phone_number_id is not None:
        doc |= {"phone_number_id": phone_number_id, "open_ended": True}
    else:
        doc |= {"fingerprint": fingerprint, "idempotency_key": idempotency_key}
    return doc


def state_of(job: dict[str, Any]) -> JobState | None:
    raw = job.get("state")
    return JobState(raw) if raw in set(JobState) else None


def moved(job: dict[str, Any], *, to: JobState, at: datetime) -> dict[str, Any]:
    """The fields that move a job to `to`: reopened, it is no longer completed."""
    fields: dict[str, Any] = {"state": to.value, "updated_at": at}
    if to is JobState.OPEN:
        fields["completed_at"] = None
    return fields


def completes(job: dict[str, Any], *, all_finished: bool) -> bool:
    """Whether the job completes now: open, every item finished, and not open-ended (a WhatsApp
    day can add more while it lasts)."""
    return state_of(job) is JobState.OPEN and not job.get("open_ended") and all_finished


def completed(job: dict[str, Any], *, at: datetime) -> tuple[int, dict[str, Any]]:
    """The completion's number (1, then 2 after a retry-failed, ...) and the fields that record
    it, with its callback pending in the same write, so that it cannot be forgotten."""
    completion = int(job.get("completions", 0)) + 1
    return completion, {
        "state": JobState.COMPLETED.value, "completed_at": at, "updated_at": at,
        "completions": completion,
        "callback": {"completion": completion, "state": CallbackState.PENDING.value},
    }  # fmt: skip
