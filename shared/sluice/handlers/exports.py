"""The Firestore-triggered functions of the Sheets export: they react to item and export writes.

The export itself (configure-sheets, the incremental writer and the backfill) is not built yet:
until a job has an export document nothing is written anywhere, which is what these do today.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from sluice import wiring
from sluice.events import DocumentChange

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Skipped:
    path: str
    reason: str


def on_item_written(change: DocumentChange) -> Skipped:
    job_id = change.parts[1]
    if not wiring.job_store().job_ref(job_id).collection("exports").document("sheets").get().exists:
        return Skipped(change.path, "the job has no Sheets export")
    log.warning("job %s has a Sheets export, which this version does not write", job_id)
    return Skipped(change.path, "Sheets writing is not part of this version")


def on_export_written(change: DocumentChange) -> Skipped:
    log.warning("export %s written; backfill is not part of this version", change.path)
    return Skipped(change.path, "backfill is not part of this version")
