"""Accepting a CRM batch: validate, persist, publish, answer.

An answer of 202 means the job and every item are in Firestore and every item's message is in
Pub/Sub. One request at a time owns a batch's intake (see sluice.domain.intake); the job's
`intake` field records how far it got, so a retry with the same Idempotency-Key finishes the work
of one that failed, instead of repeating or losing it, and never overwrites an item.
"""

from __future__ import annotations

import contextlib
import uuid
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sluice.adapters.intake_store import IntakeStore, NewItem
from sluice.adapters.publisher import Publisher
from sluice.clock import now
from sluice.domain import intake, jobs
from sluice.domain.batches import (
    BatchIn,
    fingerprint,
    item_ids,
    job_id_for,
)
from sluice.messages import WORK_ITEMS, WorkItem
from sluice.problems import Problem


@dataclass(frozen=True)
class Accepted:
    batch_id: str
    state: str
    total: int
    status_url: str

    def body(self) -> dict[str, Any]:
        return {
            "batch_id": self.batch_id,
            "state": self.state,
            "total": self.total,
            "status_url": self.status_url,
        }


def in_flight(retry_after: int) -> Problem:
    return Problem(
        409,
        "Request in flight",
        "a request with this Idempotency-Key is still being accepted; send it again after "
        f"{retry_after} s, with the same key and body",
        headers={"Retry-After": str(retry_after)},
    )


@dataclass(frozen=True)
class IntakeDeps:
    intake: IntakeStore
    publisher: Publisher
    status_api_url: str  # where the answer's status_url points
    intake_lease: timedelta  # how long one request owns a batch's intake
    retry_after: int  # what a request finding the intake in flight is told to wait


def submit_batch(
    deps: IntakeDeps, *, tenant: str, batch: BatchIn, idempotency_key: str | None
) -> Accepted:
    store = deps.intake
    job_id = job_id_for(tenant, idempotency_key)
    at = now()
    new = jobs.new_job(
        tenant=tenant, kind=batch.kind, params=batch.params, total=len(batch.items), at=at,
        callback_url=str(batch.callback_url) if batch.callback_url else None,
        fingerprint=fingerprint(batch), idempotency_key=idempotency_key,
    )  # fmt: skip
    owner = uuid.uuid4().hex
    job, decision = store.open_intake(
        job_id, new, owner=owner, lease=deps.intake_lease, retry_after=deps.retry_after
    )
    if isinstance(decision, intake.Mismatch):
        raise Problem(
            409,
            "Idempotency-Key reused",
            "this Idempotency-Key was used before with a different body",
        )
    if isinstance(decision, intake.InFlight):
        raise in_flight(decision.retry_after)
    if isinstance(decision, intake.Own):
        try:
            _finish_intake(deps, job_id, batch, decision.stage, owner)
        except BaseException:
            # Whatever stopped it (an outage answered 503), the retry need not wait for the
            # lease to run out; if even this fails, the lease runs out by itself.
            with contextlib.suppress(Exception):
                store.release_intake(job_id, owner=owner)
            raise
    return Accepted(
        batch_id=job_id,
        state=job["state"],
        total=job["total"],
        status_url=f"{deps.status_api_url.rstrip('/')}/v1/batches/{job_id}",
    )


def _finish_intake(
    deps: IntakeDeps, job_id: str, batch: BatchIn, stage: intake.Stage, owner: str
) -> None:
    """Write what is not written yet, publish, and record each stage while still the owner.
    A request that lost its lease on the way (it was slower than the lease) leaves the rest to
    the one that took over, and says the key is in flight."""
    store, lease, retry_after = deps.intake, deps.intake_lease, deps.retry_after
    ids = item_ids(job_id, batch)
    if stage is intake.Stage.WRITING:
        items = [
            NewItem(i, n, item.input)
            for n, (i, item) in enumerate(zip(ids, batch.items, strict=True))
        ]
        store.write_items(job_id, items, at=now())
        if not store.advance_intake(
            job_id, owner=owner, to=intake.Stage.ITEMS_WRITTEN, lease=lease
        ):
            raise in_flight(retry_after)
    # Publishing twice is harmless: a second delivery finds the item claimed or finished.
    messages = (WorkItem(job_id=job_id, item_id=i).model_dump() for i in ids)
    deps.publisher.publish(WORK_ITEMS, messages)
    if not store.advance_intake(job_id, owner=owner, to=intake.Stage.PUBLISHED, lease=lease):
        raise in_flight(retry_after)
