"""The Sheets export as decisions over plain data: columns, rows, who writes what, and where.

Exactly once comes from two rules. The partition (in `handlers/exports.py`): a result that
finished before the export's `created_at` is the backfill's, any other the incremental writer's.
Fixed rows: a result gets its row number once, in the transaction that records it,
and every write of it goes to that row, so a repeated write lands on the same cells.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

# Google Sheets keeps at most 50,000 characters in a cell.
MAX_CELL_CHARS = 50_000
HEADER_ROW = 1
GRID_STEP = 1000
MAX_GROWTH = 50_000

BATCH_COLUMNS = ["item_id", "input", "result", "state", "finished_at"]
WHATSAPP_COLUMNS = ["item_id", "from", "message", "reply", "state", "finished_at"]


def column_letters(index: int) -> str:
    """A 0-based column index in A1 notation: 0 -> A, 25 -> Z, 26 -> AA."""
    letters, n = "", index + 1
    while n:
        n, rem = divmod(n - 1, 26)
        letters = chr(65 + rem) + letters
    return letters


def export_kind(job: Mapping[str, Any]) -> str:
    """The kind whose columns a job's export has (a job without one is a plain batch)."""
    return str(job.get("kind") or "batch")


def columns(kind: str) -> list[str]:
    return WHATSAPP_COLUMNS if kind == "whatsapp" else BATCH_COLUMNS


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, datetime):
        return value.isoformat()
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    return text if len(text) <= MAX_CELL_CHARS else text[: MAX_CELL_CHARS - 1] + "…"


def row_of(kind: str, item_id: str, item: Mapping[str, Any]) -> list[str]:
    """One result as its row: the columns of `columns(kind)`, in order."""
    result = item.get("result") or {}
    finished = item.get("finished_at")
    if kind == "whatsapp":
        message = item.get("input") or {}
        cells = [item_id, message.get("from"), message.get("text"), result.get("reply"),
                 item.get("state"), finished]  # fmt: skip
    else:
        main = result.get("content", result) if isinstance(result, dict) else result
        cells = [item_id, item.get("input"), main, item.get("state"), finished]
    return [_cell(c) for c in cells]


def exported(item: Mapping[str, Any]) -> bool:
    """Only succeeded results go to the sheet."""
    return item.get("state") == "succeeded" and item.get("finished_at") is not None


def allocate(
    taken: Mapping[str, int], wanted: Sequence[str], next_row: int
) -> tuple[dict[str, int], int]:
    """Rows for `wanted` items: the row an item already has, else the next free one in order.

    Returns (item -> row for every wanted item, the next free row afterwards).
    """
    rows: dict[str, int] = {}
    for item_id in wanted:
        if item_id in taken:
            rows[item_id] = taken[item_id]
        elif item_id not in rows:
            rows[item_id] = next_row
            next_row += 1
    return rows, next_row


def rows_to_add(highest_row: int, grid_rows: int) -> int:
    """How many rows to add so `highest_row` fits: at least what is missing and, up to
    MAX_GROWTH, as many as the grid has (it doubles), in whole GRID_STEPs. A growing export
    makes a resize call each time its size doubles, not every GRID_STEP rows."""
    if highest_row <= grid_rows:
        return 0
    wanted = max(highest_row - grid_rows, min(grid_rows, MAX_GROWTH))
    return -(-wanted // GRID_STEP) * GRID_STEP


def may_take_lease(lease: Mapping[str, Any] | None, *, now: datetime, holder: str | None) -> bool:
    """Whether a delivery may take a writer's lease as it stands: nobody holds it, its holder let
    it expire, or its holder was an earlier delivery of this same event (`holder`, the CloudEvent
    id). Eventarc (and the local router) delivers an event again only once its delivery has
    ended: failed, timed out or lost with its instance. So a lease held under the id of the event
    now being delivered was left by a delivery that is over, and is taken over at once instead of
    after it expires. Should that ever be wrong (a duplicate delivery while the first still runs),
    nothing is written twice: rows keep the numbers their row documents hold, and the first holder
    stops at its next renewal (LeaseLost)."""
    if lease is None:
        return True
    if lease.get("until") is None or lease["until"] <= now:
        return True
    return bool(holder) and lease.get("holder") == holder
