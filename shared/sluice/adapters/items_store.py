"""A job's items in Firestore: read, claimed, changed, listed.

Every state change of an item is one write that changes the item and increments one counter shard
(sluice.adapters.job_paths), so counts never drift from states. The decisions come from
`sluice.domain.items`; this module only reads, applies and commits them.

A result that succeeds is queued for its job's Sheets export in the same commit, when the export
exists at that commit: its row document, whose creation triggers sheets-writer. When the export
is not known to exist, the commit asserts that it does not: a delete, conditional on its absence,
of the document created in the same commit as the export (its row allocator, on a path no
trigger matches; a delete on the export's own path would trigger the backfill, even as a no-op),
which fails if the export exists. So whichever commits first, the result or the export, the
result is either before the export (the backfill's) or queued for the writer, and a job without
an export costs the writer nothing.
"""

from __future__ import annotations

import contextlib
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypeVar

from google.api_core.exceptions import AlreadyExists, FailedPrecondition
from google.cloud import firestore
from google.cloud.firestore_v1.base_query import FieldFilter

from sluice.adapters.exports_store import queued_row
from sluice.adapters.job_paths import WRITE_BATCH, JobPaths
from sluice.adapters.queries import declared
from sluice.clock import now
from sluice.domain import counters
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
from sluice.domain.sheets import exported, row_of

# The backfill's pages (queries.yaml declares the query, and so its index).
SUCCEEDED_BEFORE = declared("items-succeeded-before")
# Jobs this process has seen with a Sheets export (an export is never removed), most recent last.
KNOWN_EXPORTS = 10_000

R = TypeVar("R")


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


@dataclass(frozen=True)
class Recorded(Transition):
    """A transition as committed, and whether the job may have finished with it: it finished
    an item and left the item's counter shard with no open item (or it is not known), so the
    job's completion is worth checking (see sluice.domain.counters)."""

    may_finish_job: bool = True


class ItemStore:
    def __init__(
        self, paths: JobPaths, *, steps_of: Callable[[str], Sequence[str]] = lambda job: ()
    ) -> None:
        """`steps_of(job_id)`: the steps of the job's kind counted per step (a pipeline's; none
        for a kind of one step, whose item counts say it all)."""
        self._paths = paths
        self._steps_of = steps_of
        self._exported: OrderedDict[str, None] = OrderedDict()

    def _knows_export(self, job_id: str) -> bool:
        if job_id in self._exported:
            self._exported.move_to_end(job_id)
            return True
        return False

    def _learn_export(self, job_id: str) -> None:
        self._exported[job_id] = None
        while len(self._exported) > KNOWN_EXPORTS:
            self._exported.popitem(last=False)

    def read_item(self, job_id: str, item_id: str) -> SeenItem | None:
        """The item as stored now, for a change conditional on it staying so. None: no item."""
        snap = self._paths.item_ref(job_id, item_id).get()
        return SeenItem(snap.to_dict() or {}, snap.update_time) if snap.exists else None

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
            (decision, item_input, progress), after, _ = self._change(job_id, item_id, decide, seen)
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
            saved, after, _ = self._change(job_id, item_id, decide, seen)
        except KeyError:
            return False, None
        return saved, after

    def finish_item(
        self,
        job_id: str,
        item_id: str,
        *,
        token: str,
        decide: Callable[[ItemRecord], Transition],
        seen: SeenItem | None = None,
        kind: str | None = None,
    ) -> Recorded | None:
        """Record the outcome of a claim, only if the claim is still ours; a success is queued
        for the job's Sheets export in the same commit if it has one (`kind`: the job's, which
        gives the row its columns).

        None: another delivery took the item over after our lease expired, and its outcome is
        the one that counts; ours is dropped so the item never has two results. `seen`: the
        item as the claim left it (`ClaimResult.after`).
        """
        return self.change_item(
            job_id,
            item_id,
            lambda record: decide(record) if holds_lease(record, token) else None,
            seen=seen,
            row_kind=kind,
        )

    def change_item(
        self,
        job_id: str,
        item_id: str,
        decide: Callable[[ItemRecord], Transition | None],
        *,
        seen: SeenItem | None = None,
        row_kind: str | None = None,
    ) -> Recorded | None:
        """Apply `decide` to the item as stored now, with its count, atomically. None: the item
        does not exist or `decide` left it alone. `row_kind`: see `_change`."""

        def change(doc: dict[str, Any]) -> tuple[Transition | None, Transition | None]:
            transition = decide(ItemRecord.from_doc(doc))
            return transition, transition

        try:
            transition, _, open_left = self._change(
                job_id, item_id, change, seen, row_kind=row_kind
            )
        except KeyError:
            return None
        if transition is None:
            return None
        finished = transition.after.finished and not transition.before.finished
        may_finish = finished and (open_left is None or open_left <= 0)
        return Recorded(transition.before, transition.after, transition.fields, may_finish)

    def _change(
        self,
        job_id: str,
        item_id: str,
        decide: Callable[[dict[str, Any]], tuple[R, Transition | None]],
        seen: SeenItem | None,
        *,
        row_kind: str | None = None,
    ) -> tuple[R, SeenItem | None, int | None]:
        """Apply `decide` to the item as stored, with its count, atomically. First as a write
        conditional on the item being as `seen` (one round trip, no locks: every item passes
        here twice per delivery); if it changed since, again in a transaction on what is stored
        now. Returns what `decide` said, when known the item as this change left it, and when
        known the open items left in its counter shard (see sluice.domain.counters).
        `row_kind`: queue a success for the job's Sheets export (see the module's docstring).
        Raises KeyError when the item does not exist."""
        paths = self._paths
        if seen is not None:
            result, change = decide(seen.doc)
            if change is None:
                return result, seen, None
            batch = paths.db.batch()
            when = paths.db.write_option(last_update_time=seen.update_time)
            moves = self._apply(batch, job_id, item_id, change, seen.doc, option=when)
            values = _row(row_kind, item_id, seen.doc, change)
            if values is not None:
                if self._knows_export(job_id):
                    batch.create(paths.row_ref(job_id, item_id), queued_row(values))
                else:  # no export, or this commit fails
                    batch.delete(
                        paths.rows_state_ref(job_id), option=paths.db.write_option(exists=False)
                    )
            # Changed since, or the export exists after all: decide again below.
            with contextlib.suppress(FailedPrecondition, AlreadyExists):
                # The item's write first, then its shard's if it moved a count (see _apply).
                results = batch.commit()
                open_left = (
                    counters.open_after(moves, list(results[1].transform_results))
                    if moves
                    else None
                )
                after = SeenItem({**seen.doc, **change.fields}, results[0].update_time)
                return result, after, open_left
        ref = paths.item_ref(job_id, item_id)

        @firestore.transactional
        def run(tx: firestore.Transaction) -> R:
            snap = ref.get(transaction=tx)
            if not snap.exists:
                raise KeyError(item_id)
            doc = snap.to_dict() or {}
            result, change = decide(doc)
            if change is None:
                return result
            values = _row(row_kind, item_id, doc, change)
            if values is not None and paths.export_ref(job_id).get(transaction=tx).exists:
                self._learn_export(job_id)
                row = paths.row_ref(job_id, item_id)
                if not row.get(transaction=tx).exists:
                    tx.create(row, queued_row(values))
            self._apply(tx, job_id, item_id, change, doc)
            return result

        return run(paths.db.transaction()), None, None

    def _apply(
        self,
        writer: firestore.WriteBatch,
        job_id: str,
        item_id: str,
        change: Transition,
        doc: dict[str, Any],
        *,
        option: Any = None,
    ) -> dict[str, int]:
        """The item's write, then its count's in its shard (the commit's first two write
        results, in that order). Returns the counts moved."""
        writer.update(self._paths.item_ref(job_id, item_id), change.fields, option=option)
        moves = self._moves(job_id, change, doc)
        self._paths.count(writer, job_id, moves, shard=self._paths.shard_of(_index(doc)))
        return moves

    def _moves(self, job_id: str, change: Transition, doc: dict[str, Any]) -> dict[str, int]:
        """The counts a change of the item as read (`doc`) moves: its state's and its steps'."""
        moves = counters.delta(change.before, change.after)
        steps = self._steps_of(job_id)
        if steps:
            moves |= counters.step_moves(steps, doc, {**doc, **change.fields})
        return moves

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
        items = self._paths.items(job_id)
        while True:
            query = items.where(filter=FieldFilter("state", "==", state)).limit(chunk)
            refs = [snap.reference for snap in query.stream()]
            if not refs:
                return changed

            @firestore.transactional
            def run(tx: firestore.Transaction, refs: list[Any] = refs) -> list[str]:
                done: list[str] = []
                moves: dict[int, Counter[str]] = {}  # by shard
                for snap in tx.get_all(refs):
                    doc = snap.to_dict() or {"state": "cancelled"}
                    change = decide(ItemRecord.from_doc(doc))
                    if snap.exists and change is not None:
                        tx.update(snap.reference, change.fields)
                        shard = self._paths.shard_of(_index(doc))
                        moves.setdefault(shard, Counter()).update(self._moves(job_id, change, doc))
                        done.append(snap.id)
                for shard, moved in moves.items():
                    self._paths.count(tx, job_id, dict(moved), shard=shard)
                return done

            moved = run(self._paths.db.transaction())
            changed += moved
            if not moved:
                return changed

    def items_in(self, job_id: str, state: str) -> Iterator[tuple[str, ItemRecord]]:
        query = self._paths.items(job_id).where(filter=FieldFilter("state", "==", state))
        for snap in query.select(["state", "attempts", "lease"]).stream():
            yield snap.id, ItemRecord.from_doc(snap.to_dict() or {})

    def queued_untouched_since(self, job_id: str, before: datetime) -> list[str]:
        """Queued items not changed since `before`: no delivery has reached them since then."""
        query = (
            self._paths.job_ref(job_id)
            .collection("items")
            .where(filter=FieldFilter("state", "==", "queued"))
        )
        fields = ["updated_at", "created_at"]  # a queued item never changed has only the latter
        docs = ((snap.id, snap.to_dict() or {}) for snap in query.select(fields).stream())
        touched = ((i, doc.get("updated_at") or doc.get("created_at")) for i, doc in docs)
        return [i for i, at in touched if at is None or at < before]

    def redispatched(
        self, job_id: str, item_ids: Sequence[str], *, dispatch: int, at: datetime
    ) -> None:
        """Record the dispatch of the new messages the sweeper sent these items, which
        supersedes their older ones, and stamp them so that the next sweep leaves them a while.
        Only these two fields: a delivery changing an item meanwhile keeps its own change."""
        for start in range(0, len(item_ids), WRITE_BATCH):
            batch = self._paths.db.batch()
            for item_id in item_ids[start : start + WRITE_BATCH]:
                batch.update(
                    self._paths.item_ref(job_id, item_id), {"updated_at": at, "dispatch": dispatch}
                )
            batch.commit()

    def item_inputs(self, job_id: str, item_ids: Sequence[str]) -> dict[str, Any]:
        """The inputs of the given items, read in one round trip per 500."""
        inputs: dict[str, Any] = {}
        for start in range(0, len(item_ids), WRITE_BATCH):
            refs = [self._paths.item_ref(job_id, i) for i in item_ids[start : start + WRITE_BATCH]]
            for snap in self._paths.db.get_all(refs, field_paths=["input"]):
                if snap.exists:
                    inputs[snap.id] = (snap.to_dict() or {}).get("input")
        return inputs

    def list_items(
        self, job_id: str, *, state: str | None, limit: int, after: str | None
    ) -> list[tuple[str, dict[str, Any]]]:
        query: Any = self._paths.items(job_id)
        if state is not None:
            query = query.where(filter=FieldFilter("state", "==", state))
        query = query.order_by("__name__").limit(limit)
        if after is not None:
            query = query.start_after({"__name__": self._paths.item_ref(job_id, after)})
        return [(snap.id, snap.to_dict() or {}) for snap in query.stream()]

    def succeeded_before(
        self, job_id: str, before: datetime, *, after: dict[str, Any] | None, limit: int
    ) -> list[tuple[str, dict[str, Any]]]:
        """Succeeded items that finished before `before`, in (finished_at, id) order, from just
        after the cursor `after` ({finished_at, item_id}): a stable order a restart resumes."""
        values = {"state": "succeeded", "finished_at": before}
        query = SUCCEEDED_BEFORE.on(self._paths.job_ref(job_id), values).limit(limit)
        if after:
            last = self._paths.item_ref(job_id, after["item_id"])
            query = query.start_after({"finished_at": after["finished_at"], "__name__": last})
        return [(snap.id, snap.to_dict() or {}) for snap in query.stream()]


def _index(doc: dict[str, Any]) -> int:
    return int(doc.get("index", 0))


def _row(
    kind: str | None, item_id: str, doc: dict[str, Any], change: Transition
) -> list[str] | None:
    """The row a change gives its result in a Sheets export: only a success has one."""
    after = {**doc, **change.fields}
    if kind is None or not exported(after):
        return None
    return row_of(kind, item_id, after)


__all__ = ["AlreadyFinished", "ClaimResult", "ItemStore", "LeaseHeld", "Recorded", "SeenItem"]
