"""Reading a batch: its counts from the shards, its items page by page."""

from __future__ import annotations

from typing import Any

from sluice.adapters.jobs_store import JobStore
from sluice.domain.items import ItemState
from sluice.domain.paging import decode_token, encode_token
from sluice.handlers.auth import Tenant, own_job
from sluice.problems import FieldError, Problem, not_found


def batch_status(store: JobStore, tenant: Tenant, job_id: str) -> dict[str, Any]:
    found = store.job_with_counts(job_id)
    if found is None:
        raise not_found(f"batch {job_id}")
    job, counts = found
    own_job(job, tenant, job_id)
    return {
        "batch_id": job_id,
        "kind": job.get("kind"),
        "state": job.get("state"),
        "total": counts.total,
        "counts": counts.by_state,
        "finished": counts.finished,
        "progress": counts.progress,
        "created_at": job.get("created_at"),
        "updated_at": job.get("updated_at"),
        "completed_at": job.get("completed_at"),
    }


def parse_state(raw: str | None) -> str | None:
    if raw is None or raw == "":
        return None
    try:
        return ItemState(raw).value
    except ValueError:
        allowed = ", ".join(s.value for s in ItemState)
        raise Problem(
            400, "Invalid state", errors=[FieldError("state", f"must be one of: {allowed}")]
        ) from None


def batch_items(
    store: JobStore,
    tenant: Tenant,
    job_id: str,
    *,
    state: str | None,
    page_size: int,
    page_token: str | None,
) -> dict[str, Any]:
    own_job(store.get_job(job_id), tenant, job_id)
    rows = store.list_items(
        job_id, state=state, limit=page_size + 1, after=decode_token(page_token)
    )
    page, more = rows[:page_size], len(rows) > page_size
    return {
        "items": [item_view(item_id, doc) for item_id, doc in page],
        "next_page_token": encode_token(page[-1][0]) if more and page else None,
    }


def item_view(item_id: str, doc: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": item_id,
        "state": doc.get("state"),
        "attempts": doc.get("attempts", 0),
        "input": doc.get("input"),
        "result": doc.get("result"),
        "error": doc.get("error"),
        "finished_at": doc.get("finished_at"),
    }
