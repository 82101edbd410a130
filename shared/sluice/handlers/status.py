"""Reading a batch: its counts from the shards, its items page by page."""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Any

from sluice.adapters.items_store import ItemStore
from sluice.adapters.jobs_store import JobStore
from sluice.adapters.publisher import Publisher
from sluice.clock import now
from sluice.domain import items, jobs
from sluice.domain.counters import calls_left, estimate_completion, step_state
from sluice.domain.items import ItemState
from sluice.domain.jobs import JobState
from sluice.domain.paging import decode_token, encode_token
from sluice.domain.whatsapp import message_again
from sluice.handlers.auth import Tenant, own_job
from sluice.messages import WHATSAPP_EVENTS, WORK_ITEMS, WorkItem
from sluice.problems import FieldError, Problem, not_found


@dataclass(frozen=True)
class BatchDeps:
    jobs: JobStore
    items: ItemStore
    publisher: Publisher
    # Each kind's steps, in order, with the provider each calls; the kind of a job whose kind
    # is not declared (sluice.topology.Kind).
    kinds: dict[str, dict[str, str]]
    default_kind: str
    # Each provider's declared rate (for a provider of remote jobs, what its polls leave for
    # starts): what a batch's remaining calls are estimated at.
    requests_per_minute: dict[str, int]


def batch_status(deps: BatchDeps, tenant: Tenant, job_id: str) -> dict[str, Any]:
    found = deps.jobs.job_with_counts(job_id)
    if found is None:
        raise not_found(f"batch {job_id}")
    job, counts = found
    own_job(job, tenant, job_id)
    providers = deps.kinds.get(str(job.get("kind"))) or deps.kinds[deps.default_kind]
    steps = counts.of_steps(list(providers))
    eta = None
    if jobs.state_of(job) is JobState.OPEN and job.get("created_at") is not None:
        # At the pace so far, but no sooner than the bottleneck provider allows.
        eta = estimate_completion(
            counts, started_at=job["created_at"], now=now(),
            calls=calls_left(steps, providers), requests_per_minute=deps.requests_per_minute,
        )  # fmt: skip
    return {
        "batch_id": job_id,
        "kind": job.get("kind"),
        "state": job.get("state"),
        "total": counts.total,
        "counts": counts.by_state,
        "finished": counts.finished,
        "progress": counts.progress,
        # For each step of its kind: its items queued, running, succeeded, failed and skipped
        # (finished without it: cancelled, or failed at another step).
        "steps": steps,
        "created_at": job.get("created_at"),
        "updated_at": job.get("updated_at"),
        "completed_at": job.get("completed_at"),
        "estimated_completion_at": eta,
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
    deps: BatchDeps,
    tenant: Tenant,
    job_id: str,
    *,
    state: str | None,
    page_size: int,
    page_token: str | None,
) -> dict[str, Any]:
    job = own_job(deps.jobs.get_job(job_id), tenant, job_id)
    steps = list(deps.kinds.get(str(job.get("kind"))) or deps.kinds[deps.default_kind])
    rows = deps.items.list_items(
        job_id, state=state, limit=page_size + 1, after=decode_token(page_token)
    )
    page, more = rows[:page_size], len(rows) > page_size
    return {
        "items": [item_view(item_id, doc, steps) for item_id, doc in page],
        "next_page_token": encode_token(page[-1][0]) if more and page else None,
    }


def item_view(item_id: str, doc: dict[str, Any], steps: list[str]) -> dict[str, Any]:
    """An item as the listing shows it: its result is its kind's last step's output; a failed
    one names the step it failed at; `steps` says how each step of its kind went."""
    return {
        "id": item_id,
        "state": doc.get("state"),
        "attempts": doc.get("attempts", 0),
        "input": doc.get("input"),
        "result": doc.get("result"),
        "error": doc.get("error"),
        "failed_step": doc.get("failed_step"),
        "finished_at": doc.get("finished_at"),
        "steps": {name: step_view(doc, name, single=len(steps) == 1) for name in steps},
    }


def step_view(doc: dict[str, Any], step: str, *, single: bool) -> dict[str, Any]:
    """One step of an item: its state (queued, running, succeeded, failed, skipped), output,
    error, attempts and times. A kind's only step is the item itself."""
    if single:
        state = doc.get("state")
        return {"state": "skipped" if state == "cancelled" else state,
                "output": doc.get("result"), "error": doc.get("error"),
                "attempts": doc.get("attempts", 0), "started_at": None,
                "finished_at": doc.get("finished_at")}  # fmt: skip
    progress = doc.get("progress") or {}
    run = (progress.get("runs") or {}).get(step) or {}
    state = step_state(doc, step) or "queued"
    return {
        "state": state,
        "output": (progress.get("steps") or {}).get(step),
        "error": doc.get("error") if state == "failed" else run.get("error"),
        "attempts": run.get("attempts", 0),
        "started_at": run.get("started_at"),
        "finished_at": run.get("finished_at"),
    }


def retry_failed(deps: BatchDeps, tenant: Tenant, job_id: str) -> dict:
    """Requeue exactly the failed items and publish them again; a repeated call finds none.
    A WhatsApp day's messages go back through the WhatsApp path, in conversation order, so
    that each gets its reply."""
    publisher = deps.publisher
    job = own_job(deps.jobs.get_job(job_id), tenant, job_id)
    if jobs.state_of(job) is JobState.CANCELLED:
        raise Problem(409, "Batch cancelled", "a cancelled batch is not retried")
    at = now()
    requeued = deps.items.transition_items(job_id, "failed", partial(items.retry, now=at))
    if requeued:
        deps.jobs.set_job_state(job_id, to=JobState.OPEN, allowed_from=(JobState.COMPLETED,))
        if job.get("kind") == "whatsapp":
            inputs = deps.items.item_inputs(job_id, requeued)
            events = [message_again(str(job["phone_number_id"]), inputs[i]) for i in requeued]
            publisher.publish_keyed(
                WHATSAPP_EVENTS, ((e.to_message(), e.ordering_key) for e in events)
            )
        else:
            publisher.publish(
                WORK_ITEMS,
                (
                    WorkItem(job_id=job_id, item_id=i, dispatch=items.dispatch_at(at)).model_dump()
                    for i in requeued
                ),
            )
    return {"batch_id": job_id, "requeued": len(requeued)}


def cancel_batch(deps: BatchDeps, tenant: Tenant, job_id: str) -> dict:
    """Queued items become cancelled; running ones finish; the batch is `cancelled`. Cancelling
    a cancelled batch again changes nothing; a completed batch is not cancelled (409), and
    neither is a WhatsApp day, whose messages keep coming."""
    job = own_job(deps.jobs.get_job(job_id), tenant, job_id)
    if job.get("open_ended"):
        detail = "a WhatsApp day's job takes messages all day and is not cancelled"
        raise Problem(409, "Not cancellable", detail)
    if not deps.jobs.set_job_state(job_id, to=JobState.CANCELLED, allowed_from=(JobState.OPEN,)):
        state = (deps.jobs.get_job(job_id) or {}).get("state")
        if state != JobState.CANCELLED:
            raise Problem(409, "Batch not open", f"the batch is {state}: only an open batch "
                          "is cancelled")  # fmt: skip
    cancelled = deps.items.transition_items(job_id, "queued", partial(items.cancel, now=now()))
    return {"batch_id": job_id, "cancelled": len(cancelled), "state": JobState.CANCELLED.value}
