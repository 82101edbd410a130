"""Jobs in Firestore: what they are, their counts, and their lifecycle.

A job's counts are the sum of its counter shards (sluice.adapters.job_paths), read with the job in
one round trip whatever its size; its state moves only by the transitions of `sluice.domain.jobs`.
"""

from __future__ import annotations

import json
from collections import Counter, OrderedDict
from collections.abc import Iterator
from datetime import datetime
from typing import Any

from google.cloud import firestore
from google.cloud.firestore_v1.base_query import FieldFilter

from sluice.adapters.job_paths import JobPaths
from sluice.clock import now
from sluice.domain import counters, intake, jobs
from sluice.domain.counters import Counts
from sluice.domain.jobs import JobState


class JobStore:
    def __init__(self, paths: JobPaths, *, cache_bytes: int = 0) -> None:
        self._paths = paths
        # Least recently used first; each entry's params size, in JSON bytes, is kept beside it.
        self._meta: OrderedDict[str, tuple[dict[str, Any], int]] = OrderedDict()
        self._meta_bytes = 0
        self._cache_bytes = cache_bytes

    def ping(self, timeout: float) -> None:
        """Raises unless Firestore answers a read within `timeout` seconds (not retried)."""
        self._paths.db.collection("health").document("probe").get(retry=None, timeout=timeout)

    def job_meta(self, job_id: str) -> dict[str, Any]:
        """A job's tenant, kind and parameters never change: each process reads them once."""
        found = self._meta.get(job_id)
        if found is not None:
            self._meta.move_to_end(job_id)
            return found[0]
        job = self.get_job(job_id) or {}
        cached = {k: job.get(k) for k in ("tenant", "kind", "params")}
        cached["params"] = cached["params"] or {}
        # Bounded by size, not count: one job's params may be large (api.max_params_bytes).
        size = len(json.dumps(cached, default=str))
        if size <= self._cache_bytes:
            self._meta[job_id] = (cached, size)
            self._meta_bytes += size
            while self._meta_bytes > self._cache_bytes:
                self._meta_bytes -= self._meta.popitem(last=False)[1][1]
        return cached

    def get_job(self, job_id: str) -> dict[str, Any] | None:
        snap = self._paths.job_ref(job_id).get()
        return snap.to_dict() if snap.exists else None

    def job_with_counts(self, job_id: str) -> tuple[dict[str, Any], Counts] | None:
        """The job and its counts in one round trip: 1 + shards documents, whatever the size."""
        refs = [self._paths.job_ref(job_id), *self._paths.shard_refs(job_id)]
        snaps = {snap.reference.path: snap for snap in self._paths.db.get_all(refs)}
        job_snap = snaps[refs[0].path]
        if not job_snap.exists:
            return None
        job = job_snap.to_dict() or {}
        shards = [snaps[ref.path].to_dict() for ref in refs[1:] if snaps[ref.path].exists]
        return job, counters.sum_shards(int(job["total"]), shards)

    def set_job_state(
        self, job_id: str, *, to: JobState, allowed_from: tuple[JobState, ...]
    ) -> bool:
        """Move the job's state if it is in one of `allowed_from`; True if it moved."""
        ref = self._paths.job_ref(job_id)

        @firestore.transactional
        def run(tx: firestore.Transaction) -> bool:
            job = ref.get(transaction=tx).to_dict() or {}
            if jobs.state_of(job) not in allowed_from:
                return False
            tx.update(ref, jobs.moved(job, to=to, at=now()))
            return True

        return bool(run(self._paths.db.transaction()))

    def complete_if_done(self, job_id: str) -> int | None:
        """Mark the job completed when every item has finished. Returns the completion's number
        (1, then 2 after a retry-failed, ...) only to the one call that made the change; the
        last item to commit always sees every other item's count. The completion callback is
        recorded as pending in the same transaction, so it cannot be forgotten."""
        found = self.job_with_counts(job_id)
        if found is None:
            return None
        job, counts = found
        if not jobs.completes(job, all_finished=counts.complete):
            return None
        ref = self._paths.job_ref(job_id)

        @firestore.transactional
        def run(tx: firestore.Transaction) -> int | None:
            stored = ref.get(transaction=tx).to_dict() or {}
            if jobs.state_of(stored) is not JobState.OPEN:
                return None
            completion, fields = jobs.completed(stored, at=now())
            tx.update(ref, fields)
            return completion

        result: int | None = run(self._paths.db.transaction())
        return result

    def _open_batches(self) -> Iterator[tuple[str, dict[str, Any]]]:
        """Open CRM batches (a WhatsApp day is open-ended, not a batch), with intake and tenant."""
        query = self._paths.db.collection("jobs").where(
            filter=FieldFilter("state", "==", JobState.OPEN.value)
        )
        for snap in query.select(["intake", "open_ended", "tenant"]).stream():
            doc = snap.to_dict() or {}
            if not doc.get("open_ended"):
                yield snap.id, doc

    def open_batches(self) -> list[str]:
        """Open CRM batches whose items were all published once (a WhatsApp day's items each
        have the live message that created them; an unfinished intake was answered 503)."""
        return [job_id for job_id, doc in self._open_batches() if doc.get("intake") == "published"]

    def tenant_backlogs(self) -> dict[str, int]:
        """Each tenant's queued items over its open CRM batches: what bulk capacity is shared by.
        (1 + shards reads per open batch; callers cache it for a few seconds.)"""
        backlog: Counter[str] = Counter()
        for job_id, doc in self._open_batches():
            # An intake not published has no message out: its items are nobody's backlog yet
            # (and one left half-written would otherwise halve a real tenant's share for ever).
            if doc.get("intake", intake.Stage.PUBLISHED) != intake.Stage.PUBLISHED:
                continue
            found = self.job_with_counts(job_id) if doc.get("tenant") else None
            if found is not None:
                backlog[str(doc["tenant"])] += found[1].by_state.get("queued", 0)
        return dict(backlog)

    def last_progress(self, job_id: str) -> datetime:
        """When the job or any of its items' counts last changed (the documents' own times)."""
        paths = self._paths
        snaps = paths.db.get_all([paths.job_ref(job_id), *paths.shard_refs(job_id)])
        return max(snap.update_time for snap in snaps if snap.exists)
