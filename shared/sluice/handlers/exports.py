"""The Sheets export: configure it (status-api), write new results (sheets-writer) and the ones
that came before it (backfill).

Exactly once, whatever is delivered twice or dies half-way:
- every result gets one row document (`ExportStore`), created by whoever sees it first, and one
  row number, given once; every write goes to that fixed row, so a repeat lands on the same cells;
- the partition: the backfill takes the results that finished before the export's `created_at`
  (the commit time of the export); the writer takes every result committed once the export
  exists, which that commit queued as its row document (sluice.adapters.items_store: a result's
  commit either queues its row or asserts that the export does not exist yet). A result that
  finished just before `created_at` but committed after it (its commit was in flight) reaches
  both: its row document makes that harmless, and without the writer it could be missed, since
  the backfill's query may already have passed it.
- one flusher per job drains the queued rows, up to `rows_per_call` per write: under load the
  rows queued while one call is in flight go out together in the next.

Who holds a lease, and for which event: a lease records the CloudEvent id of the delivery that
took it. A writer or backfill that dies has its event delivered again (Eventarc retries a failed
delivery), and that redelivery takes its own dead lease over at once instead of waiting for it to
expire, so a death costs one redelivery, not a lease plus a sweep. Taken over wrongly (a live
holder), nothing is written twice: the row documents decide every row's number, and the holder
that lost its lease stops at its next renewal and leaves the queue to the one that took it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, TypeVar

from sluice.adapters.exports_store import ExportStore, LeaseLost, Row
from sluice.adapters.items_store import ItemStore
from sluice.adapters.jobs_store import JobStore
from sluice.adapters.limiter import Limiter
from sluice.adapters.outside import ProviderError
from sluice.clock import now
from sluice.domain.sheets import columns, export_kind, row_of, rows_to_add
from sluice.eventarc import DocumentChange
from sluice.handlers.auth import Tenant, own_job
from sluice.outcomes import Ack, Fail, Redeliver
from sluice.problems import Problem
from sluice.topology import Exports

if TYPE_CHECKING:
    from sluice.adapters.sheets_api import SheetsAPI

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True)
class SheetsDeps:
    exports: ExportStore
    jobs: JobStore
    items: ItemStore
    sheets: SheetsAPI
    # The Sheets write quota, shared by every writer, backfill and configure call.
    limiter: Limiter
    settings: Exports
    clock: Callable[[], datetime] = now


def _write_call(deps: SheetsDeps, call: Callable[[], T], *, tenant: str, interactive: bool) -> T:
    """One write request under the Sheets quota. A 429 raises ProviderError, and no place under
    the quota in time raises Defer: either way the event is delivered again."""
    settings = deps.settings
    wait = settings.configure_wait_seconds if interactive else settings.capacity_wait_seconds
    return deps.limiter.call(call, tenant=tenant, interactive=interactive, wait=wait)


# -- status-api ------------------------------------------------------------------------------------


def _require_sheets(tenant: Tenant) -> None:
    if not tenant.doc.get("sheets_enabled"):
        raise Problem(
            403, "Sheets export not enabled",
            f"Google Sheets export is not enabled for tenant {tenant.id}; "
            f"ask the Sluice operator to enable it (sluice tenant sheets {tenant.id} on)",
        )  # fmt: skip


def export_view(job_id: str, export: dict[str, Any], progress: dict[str, Any]) -> dict[str, Any]:
    backfill = progress.get("backfill") or {}
    return {
        "batch_id": job_id,
        "spreadsheet_id": export.get("spreadsheet_id"),
        "spreadsheet_url": export.get("spreadsheet_url"),
        "spreadsheet_name": export.get("spreadsheet_name"),
        "created_at": export.get("created_at"),
        "backfill_state": export.get("backfill_state"),
        "backfill_error": export.get("backfill_error"),
        "backfill_rows": backfill.get("rows", 0),
        "rows_written": progress.get("written", 0),
        "last_error": progress.get("last_error"),
    }


def configure_sheets(deps: SheetsDeps, tenant: Tenant, job_id: str) -> tuple[dict[str, Any], bool]:
    """Create the job's spreadsheet with its header row and record the export; the backfill
    starts from the export's trigger, after this has answered. Again: the same spreadsheet, and a
    failed backfill scheduled once more. Returns the export and whether it is new."""
    _require_sheets(tenant)
    job = own_job(deps.jobs.get_job(job_id), tenant, job_id)
    created = False
    if deps.exports.get(job_id) is None:
        created = _create_export(deps, tenant, job_id, job)
    elif not deps.exports.reschedule_failed(job_id, now=deps.clock()):
        # Whatever else stopped (a queue left by a writer that lost access) runs again.
        deps.exports.nudge(job_id, deps.clock())
    export = deps.exports.get(job_id) or {}
    return export_view(job_id, export, deps.exports.progress(job_id)), created


def _create_export(deps: SheetsDeps, tenant: Tenant, job_id: str, job: dict[str, Any]) -> bool:
    kind = export_kind(job)
    name = f"Sluice {kind} {job_id}"
    title = deps.settings.sheet_title
    try:
        # Defer when the write quota is in use: the caller tries again.
        made = _write_call(
            deps, lambda: deps.sheets.create(name, title, columns(kind)),
            tenant=tenant.id, interactive=True,
        )  # fmt: skip
    except ProviderError as error:
        if error.permanent:
            raise Fail(f"Google Sheets refused: {error}") from None
        raise Redeliver(
            f"Google Sheets unavailable: {error}", retry_after=error.retry_after or 5
        ) from None
    now = deps.clock()
    export = {
        "tenant": tenant.id,
        "kind": kind,
        "spreadsheet_id": made.spreadsheet_id,
        "spreadsheet_url": made.url,
        "spreadsheet_name": name,
        "sheet_title": title,
        "sheet_id": made.sheet_id,
        "backfill_state": "pending",
        "backfill_error": None,
        "updated_at": now,
    }
    if deps.exports.create(job_id, export, grid_rows=made.rows):
        return True
    # Configured twice at once: the other call's export stands; this spreadsheet is left unused.
    log.warning("job %s: spreadsheet %s unused, another export won", job_id, made.spreadsheet_id)
    return False


def export_status(deps: SheetsDeps, tenant: Tenant, job_id: str) -> dict[str, Any]:
    _require_sheets(tenant)
    own_job(deps.jobs.get_job(job_id), tenant, job_id)
    export = deps.exports.get(job_id)
    if export is None:
        raise Problem(404, "Not Found", f"batch {job_id} has no Sheets export; POST to configure")
    return export_view(job_id, export, deps.exports.progress(job_id))


# -- writing rows ----------------------------------------------------------------------------------


def _write(deps: SheetsDeps, job_id: str, export: dict[str, Any], rows: dict[str, Row],
           grid_rows: int) -> int:  # fmt: skip
    """Write numbered rows to their fixed ranges (growing the grid first if they need it) and
    record them; returns how many were new."""
    if not rows:
        return 0
    tenant, spreadsheet = str(export.get("tenant")), str(export["spreadsheet_id"])
    sheet_id = int(export["sheet_id"])
    highest = max(r.number for r in rows.values())
    if highest > grid_rows:
        # The recorded size may be stale (another writer grew it): ask the sheet itself.
        actual = deps.sheets.row_count(spreadsheet, export["sheet_title"])
        add = rows_to_add(highest, actual)
        if add:
            _write_call(deps, lambda: deps.sheets.add_rows(spreadsheet, sheet_id, add),
                        tenant=tenant, interactive=False)  # fmt: skip
        deps.exports.set_grid_rows(job_id, actual + add)
    by_number = {r.number: r.values for r in rows.values()}
    _write_call(deps, lambda: deps.sheets.write_rows(spreadsheet, export["sheet_title"], by_number),
                tenant=tenant, interactive=False)  # fmt: skip
    return deps.exports.mark_written(job_id, list(rows))


def flush(
    deps: SheetsDeps, job_id: str, export: dict[str, Any], *, holder: str | None = None
) -> int:
    """Drain the job's queued rows, if no other writer is: a live flusher looks again after it
    lets go, so a row queued while it held the lease is never left behind. `holder` is the
    delivery's event id (a redelivery takes its own dead lease over). Returns rows written."""
    settings, written = deps.settings, 0
    while True:
        token = deps.exports.take_lease(
            job_id, "flush", now=deps.clock(), seconds=settings.lease_seconds, holder=holder
        )
        if token is None:
            return written
        try:
            while queued := deps.exports.unwritten(job_id, settings.rows_per_call):
                assigned = deps.exports.assign_rows(job_id, queued)
                written += _write(deps, job_id, export, assigned.rows, assigned.grid_rows)
                deps.exports.renew_lease(
                    job_id, "flush", token, now=deps.clock(), seconds=settings.lease_seconds
                )
        except LeaseLost:
            # Taken over: the taker drains the whole queue, this delivery's rows included.
            log.warning("job %s: flush lease taken over; leaving the queue to its taker", job_id)
            return written
        finally:
            deps.exports.release_lease(job_id, "flush", token)
        if not deps.exports.unwritten(job_id, 1):
            return written


def drain(deps: SheetsDeps, job_id: str, export: dict[str, Any], *,
          holder: str | None = None) -> tuple[int, str | None]:  # fmt: skip
    """`flush`, except that a sheet refusing for good (deleted, access removed) is recorded and
    acknowledged: the queue stays, the export says why, and configuring again drains it.
    Returns (rows written, the refusal)."""
    try:
        return flush(deps, job_id, export, holder=holder), None
    except ProviderError as error:
        if not error.permanent:
            raise Redeliver(f"job {job_id}: {error}", retry_after=error.retry_after) from None
        log.error("job %s: Sheets export stopped: %s", job_id, error)
        deps.exports.set_last_error(job_id, str(error))
        return 0, str(error)


def on_row_queued(deps: SheetsDeps, change: DocumentChange) -> Ack:
    """sheets-writer: a result queued for the sheet (its row document created by the commit that
    recorded it, once the export existed) goes to the sheet, with whatever else is queued."""
    job_id = change.parts[1]
    if change.after is None or change.after.get("row") is not None:
        # Created numbered: the backfill's row, which the backfill writes itself.
        return Ack(change.path, "skipped", "not a queued result")
    export = deps.exports.get(job_id)
    if export is None:
        return Ack(change.path, "skipped", "the job has no Sheets export")
    written, refused = drain(deps, job_id, export, holder=change.event_id)
    if refused:
        return Ack(change.path, "failed", refused)
    return Ack(change.path, "queued", f"{written} rows written")


# -- backfill --------------------------------------------------------------------------------------


def on_export_written(deps: SheetsDeps, change: DocumentChange) -> Ack:
    """backfill: runs (or resumes) the backfill while it is pending or running, then drains any
    rows a dead writer left queued (the sweeper touches the export for both)."""
    job_id = change.parts[1]
    export = deps.exports.get(job_id)  # as it is now: events arrive in no particular order
    if export is None:
        return Ack(change.path, "skipped", "the export no longer exists")
    action = "idle"
    if export.get("backfill_state") in ("pending", "running"):
        try:
            action = backfill(deps, job_id, export, holder=change.event_id)
        except ProviderError as error:
            if not error.permanent:
                raise Redeliver(f"job {job_id}: {error}", retry_after=error.retry_after) from None
            deps.exports.update(job_id, {"backfill_state": "failed", "backfill_error": str(error),
                                         "updated_at": deps.clock()})  # fmt: skip
            return Ack(change.path, "backfill failed", str(error))
    written, refused = drain(deps, job_id, export, holder=change.event_id)
    if refused:
        return Ack(change.path, "failed", refused)
    return Ack(change.path, action, f"{written} queued rows written")


def backfill(deps: SheetsDeps, job_id: str, export: dict[str, Any], *,
             holder: str | None = None) -> str:  # fmt: skip
    """Write the results that finished before the export, `rows_per_call` per write, recording a
    cursor after each so a restart resumes there. After `backfill_budget_seconds` it hands over to
    a fresh invocation (an event function runs at most 9 minutes). `holder`: as for `flush`."""
    settings = deps.settings
    token = deps.exports.take_lease(
        job_id, "backfill", now=deps.clock(), seconds=settings.lease_seconds, holder=holder
    )
    if token is None:
        return "running elsewhere"
    state = "completed"
    try:
        if export.get("backfill_state") != "running":
            deps.exports.update(job_id, {"backfill_state": "running", "updated_at": deps.clock()})
        record = deps.exports.backfill_record(job_id)
        cursor, done = record.get("cursor"), int(record.get("rows") or 0)
        started, kind = time.monotonic(), str(export.get("kind"))
        while page := deps.items.succeeded_before(
            job_id, export["created_at"], after=cursor, limit=settings.rows_per_call
        ):
            assigned = deps.exports.assign_rows(
                job_id, {item_id: row_of(kind, item_id, item) for item_id, item in page}
            )
            unwritten = {i: r for i, r in assigned.rows.items() if not r.written}
            _write(deps, job_id, export, unwritten, assigned.grid_rows)
            last_id, last = page[-1]
            cursor = {"finished_at": last["finished_at"], "item_id": last_id}
            done += len(page)
            deps.exports.renew_lease(
                job_id, "backfill", token, now=deps.clock(), seconds=settings.lease_seconds
            )
            deps.exports.record_backfill(job_id, cursor, done)
            if len(page) < settings.rows_per_call:
                break
            if time.monotonic() - started > settings.backfill_budget_seconds:
                state = "pending"
                break
    except LeaseLost:
        # Taken over: the taker resumes from the cursor and records the state.
        log.warning("job %s: backfill lease taken over; leaving the backfill to its taker", job_id)
        return "backfill taken over"
    finally:
        deps.exports.release_lease(job_id, "backfill", token)
    # Only once the lease is let go: a "pending" hand-over triggers the next invocation, which
    # must find the lease free.
    now = deps.clock()
    fields: dict[str, Any] = {"backfill_state": state, "updated_at": now}
    if state == "completed":
        fields["backfill_completed_at"] = now
    deps.exports.update(job_id, fields)
    return f"backfill {state}"
