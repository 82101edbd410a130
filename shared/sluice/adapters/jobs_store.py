"""Jobs, their items and their counter shards in Firestore.

Every state change of an item is one transaction that writes the item and increments one counter
shard, so counts never drift from states. The decisions themselves come from `sluice.domain.items`;
this module only reads, applies and commits them.
"""

from __future__ import annotations

import contextlib
import json
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, TypeVar

from google.api_core.exceptions import Aborted, AlreadyExists, Conflict, FailedPrecondition
from google.cloud import firestore
from google.cloud.firestore_v1.base_query import FieldFilter

from sluice.adapters.queries import declared
from sluice.clock import now
from sluice.domain import counters, intake, jobs
from sluice.domain.counters import Counts
from sluice.domain.firestore_values import entry_size
from sluice.domain.items import (
    AlreadyFinished,
    Claim,
    Claimed,
    ItemRecord,
    LeaseHeld,
    Transition,
    holds_lease,
)
from sluice.domain.items import claim as decide_claim
from sluice.domain.items import save_progress as decide_progress
from sluice.domain.jobs import JobState

# Firestore takes at most 500 writes in one commit, and a request of at most 10 MiB; its
# emulator refuses a request over 4 MiB (answering 429, which the client retries for a minute).
# Commits are cut below the smaller, leaving room for the request's own fields.
WRITE_BATCH = 500
COMMIT_BYTES = 3 * 1024 * 1024
# A write's envelope besides its fields: the document's name (at most a few hundred bytes) and
# protobuf framing.
WRITE_OVERHEAD = 1024
PARALLEL_COMMITS = 4
# The backfill's pages (queries.yaml declares the query, and so its index).
SUCCEEDED_BEFORE = declared("items-succeeded-before")


R = TypeVar("R")


def new_item_doc(index: int, item_input: Any, at: datetime) -> dict[str, Any]:
    return {
        "index": index,
        "input": item_input,
        "state": "queued",
        "attempts": 0,
        "lease": None,
        "error": None,
        "result": None,
        "finished_at": None,
        "created_at": at,
        "updated_at": at,
    }


@dataclass(frozen=True)
class NewItem:
    id: str
    index: int
    input: Any


@dataclass(frozen=True)
class SeenItem:
    """An item's document as read (or as a change left it) and its update time then."""

    doc: dict[str, Any]
    update_time: datetime


@dataclass(frozen=True)
class ClaimResult:
    decision: Claim
    input: Any = None
    # The item as the claim left it, when known: the finish is conditional on it.
    after: SeenItem | None = None
    # What earlier claims' work recorded on the item (see items.save_progress).
    progress: dict[str, Any] = field(default_factory=dict)


def commit_ranges(sizes: Sequence[int], *, max_writes: int, max_bytes: int) -> list[range]:
    """Consecutive ranges of writes, each at most `max_writes` long and `max_bytes` in sum (a
    single write larger than that gets a range of its own)."""
    ranges, start, total = [], 0, 0
    for index, size in enumerate(sizes):
        if index > start and (index - start >= max_writes or total + size > max_bytes):
            ranges.append(range(start, index))
            start, total = index, 0
        total += size
    if start < len(sizes):
        ranges.append(range(start, len(sizes)))
    return ranges


class JobStore:
    def __init__(self, db: firestore.Client, *, shards: int, cache_bytes: int = 0) -> None:
        self._db = db
        self._shards = shards
        # Least recently used first; each entry's params size, in JSON bytes, is kept beside it.
        self._meta: OrderedDict[str, tuple[dict[str, Any], int]] = OrderedDict()
        self._meta_bytes = 0
        self._cache_bytes = cache_bytes
        self._known_jobs: set[str] = set()

    # -- references -----------------------------------------------------------------------------

    def job_ref(self, job_id: str) -> firestore.DocumentReference:
        return self._db.collection("jobs").document(job_id)

    def item_ref(self, job_id: str, item_id: str) -> firestore.DocumentReference:
        return self.job_ref(job_id).collection("items").document(item_id)

    def shard_refs(self, job_id: str) -> list[firestore.DocumentReference]:
        shards = self.job_ref(job_id).collection("shards")
        return [shards.document(str(n)) for n in range(self._shards)]

    def ping(self, timeout: float) -> None:
        """Raises unless Firestore answers a read within `timeout` seconds (not retried)."""
        self._db.collection("health").document("probe").get(retry=None, timeout=timeout)

    # -- intake ---------------------------------------------------------------------------------

    def _create(self, tx: firestore.Transaction, job_id: str, job: dict[str, Any]) -> None:
        """The job and its counter shards, every item counted as queued."""
        tx.create(self.job_ref(job_id), job)
        initial = counters.initial_shards(int(job["total"]), self._shards)
        for shard_ref, shard in zip(self.shard_refs(job_id), initial, strict=True):
            tx.set(shard_ref, shard)

    def create_job(self, job_id: str, job: dict[str, Any]) -> bool:
        """Store a job as given, with its shards, unless it exists (tools and tests seed jobs
        this way; a submission goes through `open_intake`). True if it was created."""
        ref = self.job_ref(job_id)

        @firestore.transactional
        def run(tx: firestore.Transaction) -> bool:
            if ref.get(transaction=tx).exists:
                return False
            self._create(tx, job_id, job)
            return True

        return bool(run(self._db.transaction()))

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
        ref = self.job_ref(job_id)

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
            self._create(tx, job_id, created)
            return created, intake.Own(intake.Stage.WRITING, {})

        try:
            result: tuple[dict[str, Any], intake.Decision] = run(self._db.transaction())
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
        query = self._db.collection("jobs").where(
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
        ref = self.job_ref(job_id)

        @firestore.transactional
        def run(tx: firestore.Transaction) -> bool:
            snap = ref.get(transaction=tx)
            fields = change(intake.IntakeRecord.from_doc(snap.to_dict() or {}), now())
            if not snap.exists or fields is None:
                return False
            tx.update(ref, fields)
            return True

        return bool(run(self._db.transaction()))

    def write_items(self, job_id: str, items: Sequence[NewItem], *, at: datetime) -> None:
        """Store every item as queued unless it exists. An item is never overwritten: one an
        earlier owner of the intake wrote may have been published and processed since (the
        same key and fingerprint mean the same input)."""

        def commit(part: range) -> None:
            todo = list(part)
            while todo:
                batch = self._db.batch()
                for n in todo:
                    batch.create(self.item_ref(job_id, items[n].id), docs[n])
                try:
                    batch.commit()
                    return
                except (AlreadyExists, Conflict):
                    # Some were written before (a commit is all or nothing): create the rest.
                    refs = [self.item_ref(job_id, items[n].id) for n in todo]
                    there = {s.id for s in self._db.get_all(refs, field_paths=[]) if s.exists}
                    todo = [n for n in todo if items[n].id not in there]

        # Up to 500 items a commit, fewer when their inputs are large (64 KiB each may be
        # 32 MiB in 500): commits are cut by the documents' encoded size.
        docs = [new_item_doc(item.index, item.input, at) for item in items]
        sizes = [sum(entry_size(k, v) for k, v in doc.items()) + WRITE_OVERHEAD for doc in docs]
        parts = commit_ranges(sizes, max_writes=WRITE_BATCH, max_bytes=COMMIT_BYTES)
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
        item and its count are one transaction, so a repeated delivery never counts twice."""
        ref = self.item_ref(job_id, item_id)

        @firestore.transactional
        def run(tx: firestore.Transaction) -> bool:
            if ref.get(transaction=tx).exists:
                return False
            tx.create(ref, {**new_item_doc(0, item_input, at)})
            self._count(tx, job_id, counters.added())
            return True

        return bool(run(self._db.transaction()))

    def item_ids(self, job_id: str) -> list[str]:
        items = self.job_ref(job_id).collection("items")
        return [ref.id for ref in items.list_documents(page_size=1000)]

    # -- reading --------------------------------------------------------------------------------

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
        snap = self.job_ref(job_id).get()
        return snap.to_dict() if snap.exists else None

    def job_with_counts(self, job_id: str) -> tuple[dict[str, Any], Counts] | None:
        """The job and its counts in one round trip: 1 + shards documents, whatever the size."""
        refs = [self.job_ref(job_id), *self.shard_refs(job_id)]
        snaps = {snap.reference.path: snap for snap in self._db.get_all(refs)}
        job_snap = snaps[refs[0].path]
        if not job_snap.exists:
            return None
        job = job_snap.to_dict() or {}
        shards = [snaps[ref.path].to_dict() for ref in refs[1:] if snaps[ref.path].exists]
        return job, counters.sum_shards(int(job["total"]), shards)

    def item_inputs(self, job_id: str, item_ids: Sequence[str]) -> dict[str, Any]:
        """The inputs of the given items, read in one round trip per 500."""
        inputs: dict[str, Any] = {}
        for start in range(0, len(item_ids), WRITE_BATCH):
            refs = [self.item_ref(job_id, i) for i in item_ids[start : start + WRITE_BATCH]]
            for snap in self._db.get_all(refs, field_paths=["input"]):
                if snap.exists:
                    inputs[snap.id] = (snap.to_dict() or {}).get("input")
        return inputs

    def list_items(
        self, job_id: str, *, state: str | None, limit: int, after: str | None
    ) -> list[tuple[str, dict[str, Any]]]:
        query: Any = self.job_ref(job_id).collection("items")
        if state is not None:
            query = query.where(filter=FieldFilter("state", "==", state))
        query = query.order_by("__name__").limit(limit)
        if after is not None:
            query = query.start_after({"__name__": self.item_ref(job_id, after)})
        return [(snap.id, snap.to_dict() or {}) for snap in query.stream()]

    def succeeded_before(
        self, job_id: str, before: datetime, *, after: dict[str, Any] | None, limit: int
    ) -> list[tuple[str, dict[str, Any]]]:
        """Succeeded items that finished before `before`, in (finished_at, id) order, from just
        after the cursor `after` ({finished_at, item_id}): a stable order a restart resumes."""
        values = {"state": "succeeded", "finished_at": before}
        query = SUCCEEDED_BEFORE.on(self.job_ref(job_id), values).limit(limit)
        if after:
            last = self.item_ref(job_id, after["item_id"])
            query = query.start_after({"finished_at": after["finished_at"], "__name__": last})
        return [(snap.id, snap.to_dict() or {}) for snap in query.stream()]

    # -- item state changes ---------------------------------------------------------------------

    def _apply(
        self,
        writer: firestore.WriteBatch,
        job_id: str,
        item_id: str,
        change: Transition,
        *,
        option: Any = None,
    ) -> None:
        # The item first: a commit's first write result is the item's new update time.
        writer.update(self.item_ref(job_id, item_id), change.fields, option=option)
        self._count(writer, job_id, counters.delta(change.before, change.after))

    def _count(self, writer: Any, job_id: str, moves: dict[str, int]) -> None:
        """Counts moved by a commit, added to one shard picked at random, in that same commit
        (a transaction or a batch): so counts never drift from the items' states."""
        if moves:
            shard = self.shard_refs(job_id)[counters.pick_shard(self._shards)]
            writer.set(shard, {k: firestore.Increment(v) for k, v in moves.items()}, merge=True)

    def read_item(self, job_id: str, item_id: str) -> SeenItem | None:
        """The item as stored now, for a change conditional on it staying so. None: no item."""
        snap = self.item_ref(job_id, item_id).get()
        return SeenItem(snap.to_dict() or {}, snap.update_time) if snap.exists else None

    def _change(
        self,
        job_id: str,
        item_id: str,
        decide: Callable[[dict[str, Any]], tuple[R, Transition | None]],
        seen: SeenItem | None,
    ) -> tuple[R, SeenItem | None]:
        """Apply `decide` to the item as stored, with its count, atomically. First as a write
        conditional on the item being as `seen` (one round trip, no locks: every item passes
        here twice per delivery); if it changed since, again in a transaction on what is stored
        now. Returns what `decide` said and, when known, the item as this change left it.
        Raises KeyError when the item does not exist."""
        if seen is not None:
            result, change = decide(seen.doc)
            if change is None:
                return result, seen
            batch = self._db.batch()
            when = self._db.write_option(last_update_time=seen.update_time)
            self._apply(batch, job_id, item_id, change, option=when)
            with contextlib.suppress(FailedPrecondition):  # changed since: decide again below
                written = batch.commit()[0].update_time
                return result, SeenItem({**seen.doc, **change.fields}, written)
        ref = self.item_ref(job_id, item_id)

        @firestore.transactional
        def run(tx: firestore.Transaction) -> R:
            snap = ref.get(transaction=tx)
            if not snap.exists:
                raise KeyError(item_id)
            result, change = decide(snap.to_dict() or {})
            if change is not None:
                self._apply(tx, job_id, item_id, change)
            return result

        return run(self._db.transaction()), None

    def claim_item(
        self,
        job_id: str,
        item_id: str,
        *,
        token: str,
        lease_seconds: int,
        max_attempts: int,
        seen: SeenItem | None = None,
    ) -> ClaimResult | None:
        """Claim an item for one delivery, or say why not. None: the item does not exist.
        `seen`: the item as the caller last read it, which saves a transaction if unchanged."""

        def decide(doc: dict[str, Any]) -> tuple[tuple[Claim, Any, Any], Transition | None]:
            # The input comes from the same read the decision does, on either path.
            decision = decide_claim(
                ItemRecord.from_doc(doc),
                now=now(),
                token=token,
                lease_seconds=lease_seconds,
                max_attempts=max_attempts,
            )
            found = (decision, doc.get("input"), doc.get("progress") or {})
            if isinstance(decision, Claimed):
                return found, decision.transition
            return found, decision if isinstance(decision, Transition) else None

        try:
            (decision, item_input, progress), after = self._change(job_id, item_id, decide, seen)
        except KeyError:
            return None
        return ClaimResult(decision, item_input, after, progress)

    def save_progress(
        self,
        job_id: str,
        item_id: str,
        *,
        token: str,
        fields: dict[str, Any],
        seen: SeenItem | None,
    ) -> tuple[bool, SeenItem | None]:
        """Record how far the claim's work got, only while the claim is `token`'s. Returns
        whether it was recorded and, when known, the item as it is now (for the next write
        conditional on it)."""

        def decide(doc: dict[str, Any]) -> tuple[bool, Transition | None]:
            change = decide_progress(
                ItemRecord.from_doc(doc), doc.get("progress") or {}, token=token, fields=fields,
                now=now(),
            )  # fmt: skip
            return change is not None, change

        try:
            return self._change(job_id, item_id, decide, seen)
        except KeyError:
            return False, None

    def finish_item(
        self,
        job_id: str,
        item_id: str,
        *,
        token: str,
        decide: Callable[[ItemRecord], Transition],
        seen: SeenItem | None = None,
    ) -> Transition | None:
        """Record the outcome of a claim, only if the claim is still ours.

        None: another delivery took the item over after our lease expired, and its outcome is
        the one that counts; ours is dropped so the item never has two results. `seen`: the
        item as the claim left it (`ClaimResult.after`).
        """
        return self.change_item(
            job_id,
            item_id,
            lambda record: decide(record) if holds_lease(record, token) else None,
            seen=seen,
        )

    def change_item(
        self,
        job_id: str,
        item_id: str,
        decide: Callable[[ItemRecord], Transition | None],
        *,
        seen: SeenItem | None = None,
    ) -> Transition | None:
        """Apply `decide` to the item as stored now, with its count, atomically. None: the item
        does not exist or `decide` left it alone."""

        def change(doc: dict[str, Any]) -> tuple[Transition | None, Transition | None]:
            transition = decide(ItemRecord.from_doc(doc))
            return transition, transition

        try:
            return self._change(job_id, item_id, change, seen)[0]
        except KeyError:
            return None

    def items_in(self, job_id: str, state: str) -> Iterator[tuple[str, ItemRecord]]:
        query = (
            self.job_ref(job_id).collection("items").where(filter=FieldFilter("state", "==", state))
        )
        for snap in query.select(["state", "attempts", "lease"]).stream():
            yield snap.id, ItemRecord.from_doc(snap.to_dict() or {})

    def queued_untouched_since(self, job_id: str, before: datetime) -> list[str]:
        """Queued items not changed since `before`: no delivery has reached them since then."""
        query = (
            self.job_ref(job_id)
            .collection("items")
            .where(filter=FieldFilter("state", "==", "queued"))
        )
        docs = ((snap.id, snap.to_dict() or {}) for snap in query.select(["updated_at"]).stream())
        return [i for i, doc in docs if doc.get("updated_at") is None or doc["updated_at"] < before]

    def redispatched(
        self, job_id: str, item_ids: Sequence[str], *, dispatch: int, at: datetime
    ) -> None:
        """Record the dispatch of the new messages the sweeper sent these items, which
        supersedes their older ones, and stamp them so that the next sweep leaves them a while.
        Only these two fields: a delivery changing an item meanwhile keeps its own change."""
        for start in range(0, len(item_ids), WRITE_BATCH):
            batch = self._db.batch()
            for item_id in item_ids[start : start + WRITE_BATCH]:
                batch.update(
                    self.item_ref(job_id, item_id), {"updated_at": at, "dispatch": dispatch}
                )
            batch.commit()

    # -- what the sweeper looks at --------------------------------------------------------------

    def _open_batches(self) -> Iterator[tuple[str, dict[str, Any]]]:
        """Open CRM batches (a WhatsApp day is open-ended, not a batch), with intake and tenant."""
        query = self._db.collection("jobs").where(
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
        snaps = self._db.get_all([self.job_ref(job_id), *self.shard_refs(job_id)])
        return max(snap.update_time for snap in snaps if snap.exists)

    def transition_items(
        self,
        job_id: str,
        state: str,
        decide: Callable[[ItemRecord], Transition | None],
        *,
        chunk: int = 200,
    ) -> list[str]:
        """Apply `decide` to every item now in `state`, a chunk per transaction; each item is
        read again inside its transaction, so one that moved meanwhile is left alone. Returns the
        ids that changed."""
        changed: list[str] = []
        items = self.job_ref(job_id).collection("items")
        while True:
            query = items.where(filter=FieldFilter("state", "==", state)).limit(chunk)
            refs = [snap.reference for snap in query.stream()]
            if not refs:
                return changed

            @firestore.transactional
            def run(tx: firestore.Transaction, refs: list[Any] = refs) -> list[str]:
                done, moves = [], Counter[str]()
                for snap in tx.get_all(refs):
                    change = decide(ItemRecord.from_doc(snap.to_dict() or {"state": "cancelled"}))
                    if snap.exists and change is not None:
                        tx.update(snap.reference, change.fields)
                        moves.update(counters.delta(change.before, change.after))
                        done.append(snap.id)
                self._count(tx, job_id, dict(moves))
                return done

            moved = run(self._db.transaction())
            changed += moved
            if not moved:
                return changed

    def set_job_state(
        self, job_id: str, *, to: JobState, allowed_from: tuple[JobState, ...]
    ) -> bool:
        """Move the job's state if it is in one of `allowed_from`; True if it moved."""
        ref = self.job_ref(job_id)

        @firestore.transactional
        def run(tx: firestore.Transaction) -> bool:
            job = ref.get(transaction=tx).to_dict() or {}
            if jobs.state_of(job) not in allowed_from:
                return False
            tx.update(ref, jobs.moved(job, to=to, at=now()))
            return True

        return bool(run(self._db.transaction()))

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
        ref = self.job_ref(job_id)

        @firestore.transactional
        def run(tx: firestore.Transaction) -> int | None:
            stored = ref.get(transaction=tx).to_dict() or {}
            if jobs.state_of(stored) is not JobState.OPEN:
                return None
            completion, fields = jobs.completed(stored, at=now())
            tx.update(ref, fields)
            return completion

        result: int | None = run(self._db.transaction())
        return result


__all__ = ["AlreadyFinished", "ClaimResult", "JobStore", "LeaseHeld", "NewItem"]
