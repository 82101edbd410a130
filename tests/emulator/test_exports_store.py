"""The Sheets export's Firestore side on the emulator: one export per job, rows fixed once even
under concurrent writers, and one flusher at a time."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import pytest

from sluice.adapters.exports_store import ExportStore

T0 = datetime(2026, 11, 21, tzinfo=UTC)


@pytest.fixture
def exports(db) -> ExportStore:
    store = ExportStore(db)
    assert store.create("job", {"spreadsheet_id": "s1", "created_at": T0}, grid_rows=1000)
    return store


def test_a_job_has_one_export_whoever_configures_it_again(exports):
    assert not exports.create("job", {"spreadsheet_id": "s2", "created_at": T0}, grid_rows=1000)
    assert exports.get("job")["spreadsheet_id"] == "s1"
    assert exports.progress("job")["next_row"] == 2  # row 1 is the header


def test_rows_are_given_once_and_kept_by_every_later_writer(exports):
    first = exports.assign_rows("job", {"a": ["a", "1"], "b": ["b", "2"]})
    assert first == {"a": 2, "b": 3}
    again = exports.assign_rows("job", {"b": ["b", "changed"], "c": ["c", "3"]})
    assert again == {"b": 3, "c": 4}
    assert exports.unwritten("job", 10) == {
        "a": (2, ["a", "1"]), "b": (3, ["b", "2"]), "c": (4, ["c", "3"]),
    }  # fmt: skip


def test_concurrent_writers_never_give_two_items_one_row_nor_one_item_two(exports):
    items = {f"i{n}": [f"i{n}"] for n in range(40)}
    chunks = [dict(list(items.items())[k::2]) for k in range(2)] * 2  # each item twice

    # Two at a time, as when a flush lease is taken over: rows are assigned by lease holders.
    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(lambda c: exports.assign_rows("job", c), chunks))
    rows: dict[str, int] = {}
    for result in results:
        for item, row in result.items():
            assert rows.setdefault(item, row) == row
    assert sorted(rows.values()) == list(range(2, 42))
    assert exports.progress("job")["next_row"] == 42


def test_more_rows_than_one_transaction_holds_are_assigned_in_chunks(exports):
    rows = exports.assign_rows("job", {f"i{n:04d}": [n] for n in range(1200)})
    assert sorted(rows.values()) == list(range(2, 1202))


def test_written_rows_leave_the_unwritten_set_and_are_counted(exports):
    exports.assign_rows("job", {"a": ["a"], "b": ["b"]})
    exports.mark_written("job", ["a"])
    assert set(exports.unwritten("job", 10)) == {"b"}
    assert exports.progress("job")["written"] == 1


def test_one_flusher_at_a_time_and_an_expired_lease_is_taken_over(exports):
    token = exports.take_flush("job", now=T0, seconds=60)
    assert token is not None
    assert exports.take_flush("job", now=T0 + timedelta(seconds=59), seconds=60) is None
    taken_over = exports.take_flush("job", now=T0 + timedelta(seconds=61), seconds=60)
    assert taken_over is not None
    exports.release_flush("job", token)  # the old holder's release changes nothing
    assert exports.take_flush("job", now=T0 + timedelta(seconds=62), seconds=60) is None
    exports.release_flush("job", taken_over)
    assert exports.take_flush("job", now=T0 + timedelta(seconds=62), seconds=60) is not None
