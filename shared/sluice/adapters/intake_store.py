"""A submission's way into Firestore: its job, its items and who is writing them.

A CRM batch is written once by the request that owns its intake (see sluice.domain.intake), in
commits cut by size, an item never overwritten; a WhatsApp day is a job that items are added to as
messages arrive, each with its count in one transaction.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from google.api_core.exceptions import Aborted, AlreadyExists, Conflict
from google.cloud import firestore
from google.cloud.firestore_v1.base_query import FieldFilter

from sluice.adapters.bulk_creates import add_creates
from sluice.adapters.job_paths import WRITE_BATCH, JobPaths
from sluice.adapters.request_parts import request_ranges
from sluice.clock import now
from sluice.domain import counters, intake, jobs
from sluice.domain.firestore_values import entry_size
from sluice.domain.jobs import JobState

# Firestore takes a request of at most 10 MiB (and WRITE_BATCH writes); its emulator refuses a
# request over 4 MiB (answering 429, which the client retries for a minute). Commits are cut
# below the smaller, leaving room for the request's own fields.
COMMIT_BYTES = 3 * 1024 * 1024
# A write's envelope besides its fields: the document's name (at most a few hundred bytes) and
# protobuf framing.
WRITE_OVERHEAD = 1024
PARALLEL_COMMITS = 4


def new_item_doc(index: int, item_input: Any, at: datetime) -> dict[str, Any]:
    # Only what a queued item has: the fields a run sets (attempts, lease, result, error,
    # finished_at, updated_at) are read as absent = never set. Each field is encoded, sent and
    # indexed for every item of every batch; six fewer make a 10,000-item intake faster.
    return {"index": index, "input": item_input, "state": "queued", "created_at": at}


@dataclass(frozen=True)
class NewItem:
    id: str
    index: int
    input: Any


class IntakeStore:
    def __init__(self, paths: JobPaths) -> None:
        self._paths = paths
        self._known_jobs: set[str] = set()

    def create_job(self, job_id: str, job: dict[str, Any]) -> bool:
        """Store a job as given, with its shards, unless it exists (tools and tests seed jobs
        this way; a submission goes through `open_intake`). True if it was created.

        One commit of creates, not a transaction: no read, so no lock that every delivery of a
        day's first messages would queue on (a burst of them timed out on it)."""
        batch = self._paths.db.batch()
        self._paths.create(batch, job_id, job)
        try:
            batch.commit()
        except AlreadyExists:
            return False
        return True

    def open_intake(
        self,
        job_id: str,
        job: dict[str, Any],
        *,
        owner: str,
        lease: timedelta,
        retry_after: int = 1,
    ) -> tuple[dict[str, Any], intake.Decision]:
        """Create the job and its shards, owned by `owner`, unless it exists; otherwise decide
        what this request may do with the stored one (see sluice.domain.intake). Returns the
        job as stored and the decision; an `Own` decision's lease is taken in the same
        transaction, so two requests can never both own an intake."""
        ref = self._paths.job_ref(job_id)

        @firestore.transactional
        def run(tx: firestore.Transaction) -> tuple[dict[str, Any], intake.Decision]:
            snap = ref.get(transaction=tx)
            at = now()
            if snap.exists:
                stored = snap.to_dict() or {}
                decision = intake.decide(
                    intake.IntakeRecord.from_doc(stored),
                    fingerprint=job["fingerprint"], owner=owner, now=at, lease=lease,
                    retry_after=retry_after,
                )  # fmt: skip
                if isinstance(decision, intake.Own):
                    tx.update(ref, decision.fields)
                return stored, decision
            created = {**job, "intake": intake.Stage.WRITING.value,
                       **intake.lease_fields(owner, now=at, lease=lease)}  # fmt: skip
            self._paths.create(tx, job_id, created)
            return created, intake.Own(intake.Stage.WRITING, {})

        try:
            result: tuple[dict[str, Any], intake.Decision] = run(self._paths.db.transaction())
        except (Aborted, ValueError) as contended:
            # Other requests with the key were in this transaction at the same moment, and
            # Firestore gave up on this one: the key is in flight.
            if isinstance(contended, ValueError) and not str(contended).startswith(
                "Failed to commit transaction"
            ):
                raise
            return job, intake.InFlight(retry_after)
        return result

    def advance_intake(
        self, job_id: str, *, owner: str, to: intake.Stage, lease: timedelta
    ) -> bool:
        """Move the intake on and renew the owner's lease; False if `owner` lost it."""
        return self._intake_change(
            job_id,
            lambda stored, at: intake.advance(stored, owner=owner, to=to, now=at, lease=lease),
        )

    def release_intake(self, job_id: str, *, owner: str) -> bool:
        """Give the intake up, so that a retry takes it over at once; False if not ours."""
        return self._intake_change(
            job_id, lambda stored, at: intake.release(stored, owner=owner, now=at)
        )

    def abandon_intake(self, job_id: str, *, owner: str) -> bool:
        """Mark an intake the sweeper took over, left half-written, abandoned."""
        return self._intake_change(
            job_id, lambda stored, at: intake.abandon(stored, owner=owner, now=at)
        )

    def unfinished_intakes(self) -> list[tuple[str, intake.IntakeRecord, datetime]]:
        """Open jobs whose intake is not published (nor abandoned), with when each last changed."""
        query = self._paths.db.collection("jobs").where(
            filter=FieldFilter("intake", "in", [intake.Stage.WRITING, intake.Stage.ITEMS_WRITTEN])
        )
        fields = ["intake", "intake_lease", "fingerprint", "updated_at", "state"]
        found = []
        for snap in query.select(fields).stream():
            doc = snap.to_dict() or {}
            if jobs.state_of(doc) is JobState.OPEN:
                changed = doc.get("updated_at") or snap.update_time
                found.append((snap.id, intake.IntakeRecord.from_doc(doc), changed))
        return found

    def _intake_change(
        self,
        job_id: str,
        change: Callable[[intake.IntakeRecord, datetime], dict[str, Any] | None],
    ) -> bool:
        ref = self._paths.job_ref(job_id)

        @firestore.transactional
        def run(tx: firestore.Transaction) -> bool:
            snap = ref.get(transaction=tx)
            fields = change(intake.IntakeRecord.from_doc(snap.to_dict() or {}), now())
            if not snap.exists or fields is None:
                return False
            tx.update(ref, fields)
            return True

        return bool(run(self._paths.db.transaction()))

    def write_items(self, job_id: str, items: Sequence[NewItem], *, at: datetime) -> None:
        """Store every item as queued unless it exists. An item is never overwritten: one an
        earlier owner of the intake wrote may have been published and processed since (the
        same key and fingerprint mean the same input)."""

        def commit(part: range) -> None:
            todo = list(part)
            while todo:
                batch = self._paths.db.batch()
                add_creates(batch, ((self._paths.item_ref(job_id, items[n].id), docs[n])
                                    for n in todo))  # fmt: skip
                try:
                    batch.commit()
                    return
                except (AlreadyExists, Conflict):
                    # Some were written before (a commit is all or nothing): create the rest.
                    refs = [self._paths.item_ref(job_id, items[n].id) for n in todo]
                    there = {s.id for s in self._paths.db.get_all(refs, field_paths=[]) if s.exists}
                    todo = [n for n in todo if items[n].id not in there]

        # Up to 500 items a commit, fewer when their inputs are large (64 KiB each may be
        # 32 MiB in 500): commits are cut by the documents' encoded size.
        docs = [new_item_doc(item.index, item.input, at) for item in items]
        sizes = [sum(entry_size(k, v) for k, v in doc.items()) + WRITE_OVERHEAD for doc in docs]
        parts = request_ranges(sizes, max_count=WRITE_BATCH, max_bytes=COMMIT_BYTES)
        # Several commits at once: a 10,000-item batch is 20 commits, and the submitter waits
        # for all of them (bench/ingest.py). The first error is raised once all have ended.
        with ThreadPoolExecutor(PARALLEL_COMMITS) as pool:
            for done in [pool.submit(commit, part) for part in parts]:
                done.result()

    def ensure_job(self, job_id: str, job: dict[str, Any]) -> None:
        """Create a job that items are added to as they arrive, once; known ids skip the read."""
        if job_id not in self._known_jobs:
            self.create_job(job_id, {**job, "total": 0})
            self._known_jobs.add(job_id)

    def add_item(self, job_id: str, item_id: str, item_input: Any, *, at: datetime) -> bool:
        """Add one queued item to an open-ended job unless it is there; True if added. The
        item's creation and its count are one commit, so a repeated delivery never counts
        twice; without a read, so that concurrent deliveries never wait on each other's locks."""
        # An added item has no place in a batch: a number from its id spreads its counts over
        # the shards as a batch's indices do.
        index = zlib.crc32(item_id.encode())
        batch = self._paths.db.batch()
        batch.create(self._paths.item_ref(job_id, item_id), new_item_doc(index, item_input, at))
        self._paths.count(batch, job_id, counters.added(), shard=self._paths.shard_of(index))
        try:
            batch.commit()
        except AlreadyExists:
            return False
        return True

    def item_ids(self, job_id: str) -> list[str]:
        """The ids of the items written so far."""
        items = self._paths.items(job_id)
        return [ref.id for ref in items.list_documents(page_size=1000)]
