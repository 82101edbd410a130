"""Accepting a CRM batch: validate, persist, publish, answer.

An answer of 202 means the job and every item are in Firestore and every item's message is in
Pub/Sub. The job's `intake` field records how far an interrupted submission got, so a retry with the
same idempotency key finishes the work instead of repeating or losing it:
`writing` (items may be partly written, nothing published) -> `items_written` -> `published`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sluice.adapters.jobs_store import IdempotencyConflict, JobStore, NewItem, now
from sluice.adapters.publisher import Publisher
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


def submit_batch(
    store: JobStore,
    publisher: Publisher,
    *,
    tenant: str,
    batch: BatchIn,
    idempotency_key: str | None,
    status_api_url: str,
) -> Accepted:
    job_id = job_id_for(tenant, idempotency_key)
    at = now()
    new_job = {
        "tenant": tenant,
        "kind": batch.kind,
        "params": batch.params,
        "callback_url": str(batch.callback_url) if batch.callback_url else None,
        "total": len(batch.items),
        "state": "open",
        "intake": "writing",
        "fingerprint": fingerprint(batch),
        "idempotency_key": idempotency_key,
        "created_at": at,
        "updated_at": at,
        "completed_at": None,
    }
    try:
        job = store.create_job(job_id, new_job)
    except IdempotencyConflict:
        raise Problem(
            409,
            "Idempotency-Key reused",
            "this Idempotency-Key was used before with a different body",
        ) from None

    ids = item_ids(job_id, batch)
    if job["intake"] == "writing":
        items = [
            NewItem(i, n, item.input)
            for n, (i, item) in enumerate(zip(ids, batch.items, strict=True))
        ]
        store.write_items(job_id, items, at=at)
        store.set_intake(job_id, "items_written")
    if job["intake"] in ("writing", "items_written"):
        # Publishing twice is harmless: a second delivery finds the item claimed or finished.
        publisher.publish(
            WORK_ITEMS, (WorkItem(job_id=job_id, item_id=i).model_dump() for i in ids)
        )
        store.set_intake(job_id, "published")
    return Accepted(
        batch_id=job_id,
        state=job["state"],
        total=job["total"],
        status_url=f"{status_api_url.rstrip('/')}/v1/batches/{job_id}",
    )
