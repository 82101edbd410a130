"""A job's Sheets export in Firestore: its settings, its fixed rows, and who may write when.

- `jobs/{job}/exports/sheets`: the export (spreadsheet, `created_at`, backfill state and cursor).
  Its writes are what trigger the backfill function.
- `jobs/{job}/exports/sheets/rows/{item}`: the row an item's result was given, its values and
  whether they have reached the sheet. Created once, in the transaction that takes the row number.
- `jobs/{job}/exports/sheets/state/rows`: the next free row, the sheet's grid size, the rows
  written and the flush lease. A document below the export, so changing it triggers nothing.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

from google.cloud import firestore
from google.cloud.firestore_v1.base_query import FieldFilter

from sluice.domain.sheets import HEADER_ROW, allocate

# A transaction writes at most 500 documents: the row documents plus the allocator.
ASSIGN_CHUNK = 499


class ExportStore:
    def __init__(self, db: firestore.Client) -> None:
        self._db = db

    def export_ref(self, job_id: str) -> firestore.DocumentReference:
        return self._db.collection("jobs").document(job_id).collection("exports").document("sheets")

    def _alloc_ref(self, job_id: str) -> firestore.DocumentReference:
        return self.export_ref(job_id).collection("state").document("rows")

    def _row_ref(self, job_id: str, item_id: str) -> firestore.DocumentReference:
        return self.export_ref(job_id).collection("rows").document(item_id)

    # -- the export ------------------------------------------------------------------------------

    def get(self, job_id: str) -> dict[str, Any] | None:
        snap = self.export_ref(job_id).get()
        return snap.to_dict() if snap.exists else None

    def create(self, job_id: str, export: dict[str, Any], grid_rows: int) -> bool:
        """Record the export once: False if the job already had one (which is left as it was)."""
        ref, alloc = self.export_ref(job_id), self._alloc_ref(job_id)

        @firestore.transactional
        def run(tx: firestore.Transaction) -> bool:
            if ref.get(transaction=tx).exists:
                return False
            tx.create(ref, export)
            tx.set(alloc, {"next_row": HEADER_ROW + 1, "grid_rows": grid_rows, "written": 0,
                           "flush": None})  # fmt: skip
            return True

        return bool(run(self._db.transaction()))

    def update(self, job_id: str, fields: dict[str, Any]) -> None:
        self.export_ref(job_id).update(fields)

    def progress(self, job_id: str) -> dict[str, Any]:
        return self._alloc_ref(job_id).get().to_dict() or {}

    # -- fixed rows ------------------------------------------------------------------------------

    def assign_rows(self, job_id: str, values: Mapping[str, Sequence[Any]]) -> dict[str, int]:
        """Give each item its row, once: an item that has a row keeps it (and its values)."""
        rows: dict[str, int] = {}
        items = list(values)
        for start in range(0, len(items), ASSIGN_CHUNK):
            rows |= self._assign(
                job_id, {i: values[i] for i in items[start : start + ASSIGN_CHUNK]}
            )
        return rows

    def _assign(self, job_id: str, values: Mapping[str, Sequence[Any]]) -> dict[str, int]:
        alloc = self._alloc_ref(job_id)
        refs = {item_id: self._row_ref(job_id, item_id) for item_id in values}

        @firestore.transactional
        def run(tx: firestore.Transaction) -> dict[str, int]:
            state = alloc.get(transaction=tx).to_dict() or {}
            taken = {
                snap.id: int(snap.get("row"))
                for snap in tx.get_all(list(refs.values()))
                if snap.exists
            }
            rows, next_row = allocate(taken, list(values), int(state.get("next_row", 2)))
            for item_id, row in rows.items():
                if item_id not in taken:
                    tx.create(refs[item_id], {"row": row, "values": list(values[item_id]),
                                              "written": False})  # fmt: skip
            if next_row != state.get("next_row"):
                tx.update(alloc, {"next_row": next_row})
            return rows

        result: dict[str, int] = run(self._db.transaction())
        return result

    def unwritten(self, job_id: str, limit: int) -> dict[str, tuple[int, list[Any]]]:
        """Rows given but not yet confirmed written: item -> (row, values)."""
        query = (
            self.export_ref(job_id).collection("rows")
            .where(filter=FieldFilter("written", "==", False)).limit(limit)
        )  # fmt: skip
        return {
            snap.id: (int(snap.get("row")), list(snap.get("values"))) for snap in query.stream()
        }

    def mark_written(self, job_id: str, item_ids: Sequence[str]) -> None:
        if not item_ids:
            return
        batch = self._db.batch()
        for item_id in item_ids:
            batch.update(self._row_ref(job_id, item_id), {"written": True})
        batch.set(self._alloc_ref(job_id), {"written": firestore.Increment(len(item_ids))},
                  merge=True)  # fmt: skip
        batch.commit()

    def set_grid_rows(self, job_id: str, rows: int) -> None:
        self._alloc_ref(job_id).update({"grid_rows": rows})

    # -- the flush lease: one writer at a time drains a job's unwritten rows ----------------------

    def take_flush(self, job_id: str, *, now: datetime, seconds: float) -> str | None:
        alloc, token = self._alloc_ref(job_id), uuid.uuid4().hex

        @firestore.transactional
        def run(tx: firestore.Transaction) -> bool:
            lease = (alloc.get(transaction=tx).to_dict() or {}).get("flush") or {}
            if lease.get("until") is not None and lease["until"] > now:
                return False
            tx.update(alloc, {"flush": {"token": token, "until": now + timedelta(seconds=seconds)}})
            return True

        return token if run(self._db.transaction()) else None

    def release_flush(self, job_id: str, token: str) -> None:
        alloc = self._alloc_ref(job_id)

        @firestore.transactional
        def run(tx: firestore.Transaction) -> None:
            lease = (alloc.get(transaction=tx).to_dict() or {}).get("flush") or {}
            if lease.get("token") == token:
                tx.update(alloc, {"flush": None})

        run(self._db.transaction())
