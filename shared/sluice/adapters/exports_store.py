"""A job's Sheets export in Firestore: its settings, its fixed rows, and who may write when.

- `jobs/{job}/exports/sheets`: the export (spreadsheet, `created_at`, backfill state). Its writes
  trigger the backfill function, so it changes only when the backfill's state does.
- `jobs/{job}/exports/sheets/rows/{item}`: an item's row: its values, the row number it was given
  (None until a writer numbers it) and whether it has reached the sheet. Created once per item:
  queued by the processor in the commit that records a result once the export exists, or
  numbered by the backfill for a result that finished before it. This document is what makes a
  second row impossible, and its creation is what triggers sheets-writer: a job without an
  export costs the writer nothing.
- `jobs/{job}/exports/sheets/state/rows`: the next free row, the sheet's grid size, rows written.
- `.../state/flush` and `.../state/backfill`: the leases of the one writer that drains a job's
  queued rows and of the one backfill run; the backfill's also holds its cursor.
  Documents below the export trigger nothing but a row's creation.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from google.api_core.exceptions import AlreadyExists, FailedPrecondition, NotFound
from google.cloud import firestore
from google.cloud.firestore_v1.base_query import FieldFilter

from sluice.adapters.job_paths import export_ref
from sluice.adapters.queries import declared
from sluice.domain.sheets import HEADER_ROW, allocate, may_take_lease

# A transaction writes at most 500 documents: the row documents plus the allocator.
ASSIGN_CHUNK = 499
# The sweeper's searches across jobs (queries.yaml declares them, and so their indexes).
ROWS_STRANDED = declared("rows-stranded")
BACKFILLING = declared("exports-backfilling")


@dataclass(frozen=True)
class Row:
    number: int
    values: list[Any]
    written: bool


@dataclass(frozen=True)
class Assignment:
    rows: dict[str, Row]
    # The sheet's grid as last recorded: rows above it need the grid grown first.
    grid_rows: int


def queued_row(values: Sequence[Any]) -> dict[str, Any]:
    """A result's row document as it is queued for the writer: unnumbered, unwritten. Its
    creation is what triggers sheets-writer."""
    return {"row": None, "values": list(values), "written": False,
            "queued_at": firestore.SERVER_TIMESTAMP}  # fmt: skip


class LeaseLost(Exception):
    """Another worker took this lease over (this one was presumed dead): stop, and let the
    event be delivered again."""


class ExportStore:
    def __init__(self, db: firestore.Client) -> None:
        self._db = db

    def export_ref(self, job_id: str) -> firestore.DocumentReference:
        return export_ref(self._db, job_id)

    def _state_ref(self, job_id: str, name: str) -> firestore.DocumentReference:
        return self.export_ref(job_id).collection("state").document(name)

    def _row_ref(self, job_id: str, item_id: str) -> firestore.DocumentReference:
        return self.export_ref(job_id).collection("rows").document(item_id)

    # -- the export ------------------------------------------------------------------------------

    def get(self, job_id: str) -> dict[str, Any] | None:
        snap = self.export_ref(job_id).get()
        return snap.to_dict() if snap.exists else None

    def create(self, job_id: str, export: dict[str, Any], grid_rows: int) -> bool:
        """Record the export once, its `created_at` the commit time (the instant from which every
        result's write is seen with the export in place). False if the job already had one."""
        ref, alloc = self.export_ref(job_id), self._state_ref(job_id, "rows")

        @firestore.transactional
        def run(tx: firestore.Transaction) -> bool:
            if ref.get(transaction=tx).exists:
                return False
            tx.create(ref, {**export, "created_at": firestore.SERVER_TIMESTAMP})
            tx.set(alloc, {"next_row": HEADER_ROW + 1, "grid_rows": grid_rows, "written": 0})
            return True

        return bool(run(self._db.transaction()))

    def update(self, job_id: str, fields: dict[str, Any]) -> None:
        self.export_ref(job_id).update(fields)

    def reschedule_failed(self, job_id: str, *, now: datetime) -> bool:
        """A failed backfill becomes pending again (which triggers it); any other state stays."""
        ref = self.export_ref(job_id)

        @firestore.transactional
        def run(tx: firestore.Transaction) -> bool:
            snap = ref.get(transaction=tx)
            if not snap.exists or snap.get("backfill_state") != "failed":
                return False
            tx.update(ref, {"backfill_state": "pending", "backfill_error": None,
                            "updated_at": now})  # fmt: skip
            return True

        return bool(run(self._db.transaction()))

    def progress(self, job_id: str) -> dict[str, Any]:
        """The allocator and the backfill's record: rows written, grid size, cursor."""
        refs = [self._state_ref(job_id, "rows"), self._state_ref(job_id, "backfill")]
        docs = {s.id: s.to_dict() or {} for s in self._db.get_all(refs)}  # in no set order
        return {**docs.get("rows", {}), "backfill": docs.get("backfill", {})}

    # -- rows ------------------------------------------------------------------------------------

    def enqueue(self, job_id: str, item_id: str, values: Sequence[Any]) -> bool:
        """Queue a result for the writer, once: False if the item already has its row document.
        (The processor queues a result in the commit that records it: see ItemStore.)"""
        try:
            self._row_ref(job_id, item_id).create(queued_row(values))
        except AlreadyExists:
            return False
        return True

    def assign_rows(self, job_id: str, values: Mapping[str, Sequence[Any]]) -> Assignment:
        """Give each item its row, once. An item that has its row document keeps its values and
        its number (or is numbered now); one that has none gets it, with `values`."""
        rows: dict[str, Row] = {}
        grid = 0
        items = list(values)
        for start in range(0, len(items), ASSIGN_CHUNK):
            chunk = {i: values[i] for i in items[start : start + ASSIGN_CHUNK]}
            assigned = self._assign(job_id, chunk)
            rows |= assigned.rows
            grid = assigned.grid_rows
        return Assignment(rows, grid)

    def _assign(self, job_id: str, values: Mapping[str, Sequence[Any]]) -> Assignment:
        alloc = self._state_ref(job_id, "rows")
        refs = {item_id: self._row_ref(job_id, item_id) for item_id in values}

        @firestore.transactional
        def run(tx: firestore.Transaction) -> Assignment:
            state = alloc.get(transaction=tx).to_dict() or {}
            found = {s.id: s.to_dict() or {} for s in tx.get_all(list(refs.values())) if s.exists}
            numbered = {i: int(doc["row"]) for i, doc in found.items() if doc.get("row")}
            next_row = int(state.get("next_row", HEADER_ROW + 1))
            numbers, after = allocate(numbered, list(values), next_row)
            rows: dict[str, Row] = {}
            for item_id, number in numbers.items():
                doc = found.get(item_id)
                if doc is None:
                    tx.create(refs[item_id], {"row": number, "values": list(values[item_id]),
                                              "written": False})  # fmt: skip
                    rows[item_id] = Row(number, list(values[item_id]), False)
                    continue
                if item_id not in numbered:
                    tx.update(refs[item_id], {"row": number})
                rows[item_id] = Row(number, list(doc["values"]), bool(doc.get("written")))
            if after != next_row:
                tx.update(alloc, {"next_row": after})
            return Assignment(rows, int(state.get("grid_rows", 0)))

        result: Assignment = run(self._db.transaction())
        return result

    def unwritten(self, job_id: str, limit: int) -> dict[str, list[Any]]:
        """Queued or numbered rows not yet confirmed in the sheet: item -> values."""
        query = (
            self.export_ref(job_id).collection("rows")
            .where(filter=FieldFilter("written", "==", False)).limit(limit)
        )  # fmt: skip
        return {snap.id: list(snap.get("values")) for snap in query.stream()}

    def mark_written(self, job_id: str, item_ids: Sequence[str]) -> int:
        """Record rows as in the sheet; only the ones not recorded yet are counted."""
        counted = 0
        for start in range(0, len(item_ids), ASSIGN_CHUNK):
            counted += self._mark(job_id, item_ids[start : start + ASSIGN_CHUNK])
        return counted

    def _mark(self, job_id: str, item_ids: Sequence[str]) -> int:
        alloc = self._state_ref(job_id, "rows")
        refs = [self._row_ref(job_id, item_id) for item_id in item_ids]

        @firestore.transactional
        def run(tx: firestore.Transaction) -> int:
            fresh = [s.reference for s in tx.get_all(refs) if s.exists and not s.get("written")]
            for ref in fresh:
                tx.update(ref, {"written": True})
            # A write got through: whatever stopped the export before is over.
            tx.update(alloc, {"written": firestore.Increment(len(fresh)), "last_error": None})
            return len(fresh)

        return int(run(self._db.transaction()))

    def set_grid_rows(self, job_id: str, rows: int) -> None:
        self._state_ref(job_id, "rows").update({"grid_rows": rows})

    # -- leases: one flusher and one backfill run per job at a time --------------------------------
    # Single-document writes with preconditions, not transactions: every item event of a busy job
    # asks for the flush lease, and a transaction per ask would queue them all on one lock.

    def _lease_ref(self, job_id: str, name: str) -> firestore.DocumentReference:
        return self.export_ref(job_id).collection("leases").document(name)

    def take_lease(self, job_id: str, name: str, *, now: datetime, seconds: float,
                   holder: str | None = None) -> str | None:  # fmt: skip
        """The lease `name` for `seconds`, if nobody holds it, its holder let it expire, or its
        holder was an earlier delivery of the event `holder` (its CloudEvent id), which is over
        since that event is being delivered again (see `may_take_lease`)."""
        ref, token = self._lease_ref(job_id, name), uuid.uuid4().hex
        lease = {"token": token, "until": now + timedelta(seconds=seconds), "taken_at": now,
                 "holder": holder}  # fmt: skip
        for _ in range(2):
            try:
                ref.create(lease)
                return token
            except AlreadyExists:
                pass
            snap = ref.get()
            if not snap.exists:
                continue  # let go meanwhile: create it
            if not may_take_lease(snap.to_dict(), now=now, holder=holder):
                return None
            # Replace exactly the lease as read: of several takers at once, one succeeds.
            try:
                ref.update(lease, option=self._db.write_option(last_update_time=snap.update_time))
                return token
            except (FailedPrecondition, NotFound):
                continue
        return None

    def renew_lease(self, job_id: str, name: str, token: str, *, now: datetime,
                    seconds: float) -> None:  # fmt: skip
        """Extend the lease; LeaseLost if another took it over (this holder was presumed dead)."""
        ref = self._lease_ref(job_id, name)
        snap = ref.get()
        if not snap.exists or snap.get("token") != token:
            raise LeaseLost(f"the {name} lease of job {job_id} was taken over")
        try:
            ref.update({"until": now + timedelta(seconds=seconds)},
                       option=self._db.write_option(last_update_time=snap.update_time))  # fmt: skip
        except (FailedPrecondition, NotFound):
            raise LeaseLost(f"the {name} lease of job {job_id} was taken over") from None

    def release_lease(self, job_id: str, name: str, token: str) -> None:
        ref = self._lease_ref(job_id, name)
        snap = ref.get()
        if snap.exists and snap.get("token") == token:
            with contextlib.suppress(FailedPrecondition, NotFound):
                ref.delete(option=self._db.write_option(last_update_time=snap.update_time))

    def record_backfill(self, job_id: str, cursor: dict[str, Any], rows: int) -> None:
        """Where the backfill got to: the last row it wrote, and how many rows so far."""
        self._state_ref(job_id, "backfill").set({"cursor": cursor, "rows": rows})

    def backfill_record(self, job_id: str) -> dict[str, Any]:
        """The backfill's cursor ({finished_at, item_id} of the last row it wrote) and rows."""
        return self._state_ref(job_id, "backfill").get().to_dict() or {}

    def set_last_error(self, job_id: str, message: str) -> None:
        self._state_ref(job_id, "rows").update({"last_error": message})

    # -- for the sweeper: exports whose worker died ------------------------------------------------

    def stranded_rows(self, *, now: datetime, queued_before: datetime,
                      limit: int = 500) -> set[str]:  # fmt: skip
        """Jobs with results queued for the writer before `queued_before`, still unwritten, and
        no live flush lease: their flusher died (a live one renews its lease after every write
        call, and takes it within moments of queueing a row)."""
        values = {"written": False, "queued_at": queued_before}
        query = ROWS_STRANDED.on(self._db, values).limit(limit)
        jobs = {_job_of(snap.reference) for snap in query.stream()}
        if not jobs:
            return set()
        live = {
            _job_of(snap.reference)
            for snap in self._db.get_all([self._lease_ref(j, "flush") for j in jobs])
            if snap.exists and snap.get("until") > now
        }
        return jobs - live

    def stalled_backfills(self, *, now: datetime, idle_since: datetime) -> set[str]:
        """Jobs whose backfill is `running` with an expired lease, or `pending` with no run since
        `idle_since` (the trigger that should have started it was lost)."""
        query = BACKFILLING.on(self._db, {"backfill_state": ["pending", "running"]})
        exports = {_job_of(snap.reference): snap.to_dict() or {} for snap in query.stream()}
        if not exports:
            return set()
        leases = {
            _job_of(snap.reference): snap.to_dict() or {}
            for snap in self._db.get_all([self._lease_ref(j, "backfill") for j in exports])
        }
        stalled = set()
        for job_id, export in exports.items():
            until = leases.get(job_id, {}).get("until")
            if until is not None and until > now:
                continue
            changed = export.get("updated_at") or export.get("created_at")
            if export.get("backfill_state") == "running" or changed is None or changed < idle_since:
                stalled.add(job_id)
        return stalled

    def nudge(self, job_id: str, now: datetime) -> None:
        """Touch the export: its trigger runs the backfill function, which resumes what stalled."""
        self.export_ref(job_id).update({"nudged_at": now})


def _job_of(ref: firestore.DocumentReference) -> str:
    """The job id of a document anywhere below `jobs/{job}`."""
    return ref.path.split("/")[1]
