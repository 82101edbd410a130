"""The Sheets export's decisions: rows, the partition, fixed row numbers, growing the grid."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st

from sluice.domain.sheets import (
    BATCH_COLUMNS,
    GRID_STEP,
    MAX_CELL_CHARS,
    WHATSAPP_COLUMNS,
    allocate,
    columns,
    exported,
    may_take_lease,
    row_of,
    rows_to_add,
)

T0 = datetime(2026, 11, 21, tzinfo=UTC)


def test_a_batch_result_row_has_the_id_input_main_result_state_and_finish_time():
    item = {"input": {"url": "gs://a.png"}, "result": {"content": "a cat"}, "state": "succeeded",
            "finished_at": T0}  # fmt: skip
    assert columns("summarize") == BATCH_COLUMNS
    assert row_of("summarize", "img-1", item) == [
        "img-1", '{"url": "gs://a.png"}', "a cat", "succeeded", T0.isoformat(),
    ]  # fmt: skip


def test_a_whatsapp_row_has_the_sender_the_message_and_the_reply():
    item = {"input": {"from": "16315551181", "text": "hi"}, "result": {"reply": "echo: hi"},
            "state": "succeeded", "finished_at": T0}  # fmt: skip
    assert columns("whatsapp") == WHATSAPP_COLUMNS
    assert row_of("whatsapp", "m1", item) == ["m1", "16315551181", "hi", "echo: hi", "succeeded",
                                              T0.isoformat()]  # fmt: skip


def test_a_cell_never_exceeds_what_sheets_keeps():
    row = row_of("x", "i", {"input": "a" * 60_000, "state": "succeeded", "finished_at": T0})
    assert len(row[1]) == MAX_CELL_CHARS


def test_only_succeeded_results_are_exported():
    assert exported({"state": "succeeded", "finished_at": T0})
    assert not exported({"state": "failed", "finished_at": T0})
    assert not exported({"state": "running"})


@given(
    taken=st.dictionaries(st.text(min_size=1, max_size=3), st.integers(2, 50), max_size=5),
    wanted=st.lists(st.text(min_size=1, max_size=3), max_size=20),
)
def test_rows_are_fixed_once_given_and_never_shared(taken, wanted):
    # Rows already given are unique per item, and below the next free row.
    taken = {item: row for row, item in {row: item for item, row in taken.items()}.items()}
    next_row = max(taken.values(), default=1) + 1
    rows, after = allocate(taken, wanted, next_row)
    assert set(rows) == set(wanted)
    for item, row in rows.items():
        assert row == taken.get(item, row)
    assert len(set(rows.values())) == len(rows)
    fresh = sorted(r for i, r in rows.items() if i not in taken)
    assert fresh == list(range(next_row, after))
    again, _ = allocate({**taken, **rows}, wanted, after)
    assert again == rows


def test_the_grid_grows_only_when_needed_doubling_in_whole_steps():
    assert rows_to_add(1000, 1000) == 0
    assert rows_to_add(1001, 1000) == 1000
    assert rows_to_add(3500, 1000) == 3000
    assert rows_to_add(4001, 4000) == 4000  # doubles: few resize calls for a big export
    assert rows_to_add(200_001, 200_000) == 50_000  # but never by more than 50,000 at once


@given(st.integers(1, 2_000_000), st.integers(1, 2_000_000))
def test_after_growing_the_highest_row_always_fits(highest, grid):
    added = rows_to_add(highest, grid)
    assert grid + added >= highest and added % GRID_STEP == 0


def test_a_lease_is_taken_when_free_expired_or_left_by_an_earlier_delivery_of_the_same_event():
    now = datetime(2026, 11, 21, tzinfo=UTC)
    live = {"token": "t", "until": now + timedelta(seconds=30), "holder": "event-1"}
    assert may_take_lease(None, now=now, holder="event-2")
    assert may_take_lease({**live, "until": now}, now=now, holder="event-2")  # expired
    # The event that took it is being delivered again: that delivery is over, take it at once.
    assert may_take_lease(live, now=now, holder="event-1")
    # Any other event waits for it to expire, and so does a delivery without an id.
    assert not may_take_lease(live, now=now, holder="event-2")
    assert not may_take_lease(live, now=now, holder=None)
    assert not may_take_lease({**live, "holder": None}, now=now, holder=None)
    assert not may_take_lease({**live, "holder": ""}, now=now, holder="")
