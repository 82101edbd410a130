"""Where a job's documents live in Firestore, and the one way its counts move.

A job is `jobs/{job}`, its items `jobs/{job}/items/{item}` and its counts `jobs/{job}/shards/{n}`;
its Sheets export `jobs/{job}/exports/sheets` and the row of each result
`jobs/{job}/exports/sheets/rows/{item}` (see sluice.adapters.exports_store).
The intake, item and job stores all write through this one layout, so that every commit that
moves an item between states moves its count in the same commit, and counts never drift.
"""

from __future__ import annotations

from typing import Any

from google.cloud import firestore

from sluice.domain import counters

# Firestore takes at most 500 writes in one commit.
WRITE_BATCH = 500


def export_ref(db: firestore.Client, job_id: str) -> firestore.DocumentReference:
    return db.collection("jobs").document(job_id).collection("exports").document("sheets")


class JobPaths:
    def __init__(self, db: firestore.Client, *, shards: int) -> None:
        self.db = db
        self.shards = shards

    def job_ref(self, job_id: str) -> firestore.DocumentReference:
        return self.db.collection("jobs").document(job_id)

    def items(self, job_id: str) -> firestore.CollectionReference:
        return self.job_ref(job_id).collection("items")

    def item_ref(self, job_id: str, item_id: str) -> firestore.DocumentReference:
        return self.items(job_id).document(item_id)

    def export_ref(self, job_id: str) -> firestore.DocumentReference:
        return export_ref(self.db, job_id)

    def row_ref(self, job_id: str, item_id: str) -> firestore.DocumentReference:
        return export_ref(self.db, job_id).collection("rows").document(item_id)

    def rows_state_ref(self, job_id: str) -> firestore.DocumentReference:
        """The export's row allocator, created in the same commit as the export: whether it
        exists is whether the export does, on a path no trigger matches."""
        return export_ref(self.db, job_id).collection("state").document("rows")

    def shard_refs(self, job_id: str) -> list[firestore.DocumentReference]:
        shards = self.job_ref(job_id).collection("shards")
        return [shards.document(str(n)) for n in range(self.shards)]

    def create(self, writer: Any, job_id: str, job: dict[str, Any]) -> None:
        """The job and its counter shards, every item counted as queued, in the writer's commit
        (a transaction or a batch): none of it if the job exists."""
        writer.create(self.job_ref(job_id), job)
        initial = counters.initial_shards(int(job["total"]), self.shards)
        for shard_ref, shard in zip(self.shard_refs(job_id), initial, strict=True):
            writer.set(shard_ref, shard)

    def shard_of(self, index: int) -> int:
        """The counter shard of the item at `index` of its job (see sluice.domain.counters)."""
        return counters.shard_of(index, self.shards)

    def count(self, writer: Any, job_id: str, moves: dict[str, int], *, shard: int) -> None:
        """Counts moved by a commit, added to counter shard `shard` (the items' own, see
        `shard_of`) in that same commit (a transaction or a batch): so counts never drift from
        the items' states."""
        if moves:
            ref = self.shard_refs(job_id)[shard]
            # A step's count is `steps.<step>.<state>`: nested, so that merging keeps the rest.
            fields: dict[str, Any] = {}
            for path, n in moves.items():
                *parents, leaf = path.split(".")
                node = fields
                for part in parents:
                    node = node.setdefault(part, {})
                node[leaf] = firestore.Increment(n)
            writer.set(ref, fields, merge=True)
