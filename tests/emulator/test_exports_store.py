"""The Sheets export's Firestore side on the emulator: one export per job, rows fixed once even
under concurrent writers, one flusher at a time, and a lease taken over at once by a redelivery
of the event that took it."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import pytest

from sluice.adapters.exports_store import ExportStore, LeaseLost

T0 = datetime(2026, 11, 21, tzinfo=UTC)


@pytest.fixture
def exports(db) -> ExportStore:
    store = ExportStore(db)
    assert store.create("job", {"spreadsheet_id": "s1"}, grid_rows=1000)
    return store


def numbers(assignment) -> dict[str, int]:
    return {item: row.number for item, row in assignment.rows.items()}


def test_a_job_has_one_export_whoever_configures_it_again(exports):
    assert not exports.create("job", {"spreadsheet_id": "s2"}, grid_rows=1000)
    export = exports.get("job")
    assert export["spreadsheet_id"] == "s1"
    assert export["created_at"] > T0  # the commit time, from Firestore's clock
    assert exports.progress("job")["next_row"] == 2  # row 1 is the header


def test_rows_are_given_once_and_kept_by_every_later_writer(exports):
    first = exports.assign_rows("job", {"a": ["a", "1"], "b": ["b", "2"]})
    assert numbers(first) == {"a": 2, "b": 3}
    again = exports.assign_rows("job", {"b": ["b", "changed"], "c": ["c", "3"]})
    assert numbers(again) == {"b": 3, "c": 4}
    assert again.rows["b"].values == ["b", "2"]  # the values it was given first
    assert again.grid_rows == 1000
    assert exports.unwritten("job", 10) == {"a": ["a", "1"], "b": ["b", "2"], "c": ["c", "3"]}


def test_a_queued_result_is_queued_once_and_numbered_by_the_next_assignment(exports):
    assert exports.enqueue("job", "q", ["q", "first"])
    assert not exports.enqueue("job", "q", ["q", "again"])  # a repeated event
    assert exports.unwritten("job", 10) == {"q": ["q", "first"]}
    exports.assign_rows("job", {"a": ["a"]})
    assigned = exports.assign_rows("job", exports.unwritten("job", 10))
    assert numbers(assigned) == {"a": 2, "q": 3}
    assert assigned.rows["q"].values == ["q", "first"]


def test_concurrent_writers_never_give_two_items_one_row_nor_one_item_two(exports):
    items = {f"i{n}": [f"i{n}"] for n in range(40)}
    chunks = [dict(list(items.items())[k::2]) for k in range(2)] * 2  # each item twice

    # Two at a time, as when a flush lease is taken over: rows are assigned by lease holders.
    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(lambda c: numbers(exports.assign_rows("job", c)), chunks))
    rows: dict[str, int] = {}
    for result in results:
        for item, row in result.items():
            assert rows.setdefault(item, row) == row
    assert sorted(rows.values()) == list(range(2, 42))
    assert exports.progress("job")["next_row"] == 42


def test_more_rows_than_one_transaction_holds_are_assigned_in_chunks(exports):
    rows = numbers(exports.assign_rows("job", {f"i{n:04d}": [n] for n in range(1200)}))
    assert sorted(rows.values()) == list(range(2, 1202))


def test_written_rows_leave_the_unwritten_set_and_are_counted_once(exports):
    exports.assign_rows("job", {"a": ["a"], "b": ["b"]})
    assert exports.mark_written("job", ["a"]) == 1
    assert exports.mark_written("job", ["a"]) == 0  # written twice (a race): counted once
    assert set(exports.unwritten("job", 10)) == {"b"}
    assert exports.progress("job")["written"] == 1
    assert exports.assign_rows("job", {"a": ["a"]}).rows["a"].written


@pytest.mark.parametrize("name", ["flush", "backfill"])
def test_one_holder_at_a_time_and_an_expired_lease_is_taken_over(exports, name):
    def take(after: float) -> str | None:
        return exports.take_lease("job", name, now=T0 + timedelta(seconds=after), seconds=60)

    token = take(0)
    assert token is not None
    assert take(59) is None
    taken_over = take(61)
    assert taken_over is not None
    exports.release_lease("job", name, token)  # the old holder's release changes nothing
    with pytest.raises(LeaseLost):
        exports.renew_lease("job", name, token, now=T0, seconds=60)
    assert take(62) is None
    exports.renew_lease("job", name, taken_over, now=T0 + timedelta(seconds=62), seconds=60)
    assert take(100) is None  # renewed until 122
    exports.release_lease("job", name, taken_over)
    assert take(62) is not None


def test_the_sweeper_finds_a_stalled_backfill_and_a_queue_left_behind(exports, db):
    now = datetime.now(UTC)
    exports.update("job", {"backfill_state": "running"})
    assert exports.stalled_backfills(now=now, idle_since=now) == {"job"}  # no live lease
    token = exports.take_lease("job", "backfill", now=now, seconds=60)
    assert exports.stalled_backfills(now=now, idle_since=now) == set()
    exports.release_lease("job", "backfill", token)
    exports.update("job", {"backfill_state": "completed"})
    assert exports.stalled_backfills(now=now, idle_since=now) == set()

    exports.enqueue("job", "q", ["q"])
    later = datetime.now(UTC) + timedelta(seconds=1)
    assert exports.stranded_rows(now=later, queued_before=now - timedelta(seconds=60)) == set()
    assert exports.stranded_rows(now=later, queued_before=later) == {"job"}
    # A live flusher is draining it: not stranded until its lease has run out.
    token = exports.take_lease("job", "flush", now=later, seconds=60, holder="e1")
    assert exports.stranded_rows(now=later, queued_before=later) == set()
    expired = later + timedelta(seconds=61)
    assert exports.stranded_rows(now=expired, queued_before=later) == {"job"}
    exports.release_lease("job", "flush", token)
    exports.mark_written("job", ["q"])
    assert exports.stranded_rows(now=later, queued_before=later) == set()


def test_many_concurrent_takers_get_one_lease_without_waiting_on_a_lock(exports):
    def take(_: int) -> str | None:
        return exports.take_lease("job", "flush", now=T0, seconds=60)

    with ThreadPoolExecutor(16) as pool:
        assert sum(t is not None for t in pool.map(take, range(32))) == 1
    later = T0 + timedelta(seconds=61)  # expired: many try to take it over, one does
    with ThreadPoolExecutor(16) as pool:
        tokens = list(pool.map(lambda _: exports.take_lease("job", "flush", now=later,
                                                             seconds=60), range(32)))  # fmt: skip
    assert sum(t is not None for t in tokens) == 1


@pytest.mark.parametrize("name", ["flush", "backfill"])
def test_a_redelivery_of_the_holders_event_takes_the_lease_over_at_once(exports, name):
    def take(after: float, event: str | None) -> str | None:
        at = T0 + timedelta(seconds=after)
        return exports.take_lease("job", name, now=at, seconds=60, holder=event)

    dead = take(0, "event-1")
    assert dead is not None
    # Another event's delivery waits for the lease to expire, as does one with no event id.
    assert take(1, "event-2") is None
    assert take(1, None) is None
    # event-1 again: the delivery that took the lease is over, so this one takes it now.
    again = take(1, "event-1")
    assert again is not None and again != dead
    with pytest.raises(LeaseLost):  # were the first still alive, it stops at its next renewal
        exports.renew_lease("job", name, dead, now=T0 + timedelta(seconds=2), seconds=60)
    exports.release_lease("job", name, dead)  # and its release changes nothing
    assert take(59, "event-2") is None  # held until 61 by the redelivery
    exports.renew_lease("job", name, again, now=T0 + timedelta(seconds=30), seconds=60)
    assert take(89, "event-2") is None
    assert take(91, "event-2") is not None  # expired: another event takes it


def test_concurrent_redeliveries_of_one_event_take_its_lease_one_at_a_time(exports):
    assert exports.take_lease("job", "flush", now=T0, seconds=60, holder="event-1")
    at = T0 + timedelta(seconds=1)

    def take(event: str) -> str | None:
        return exports.take_lease("job", "flush", now=at, seconds=60, holder=event)

    with ThreadPoolExecutor(8) as pool:
        assert list(pool.map(take, ["event-2"] * 16)) == [None] * 16  # another event's lease
    with ThreadPoolExecutor(8) as pool:
        tokens = list(pool.map(take, ["event-1"] * 16))
    won = [t for t in tokens if t is not None]
    assert won  # taken over; whoever holds it last, exactly one token is the lease's now
    held = [t for t in won if _renews(exports, t, at)]
    assert len(held) == 1


def _renews(exports: ExportStore, token: str, at: datetime) -> bool:
    try:
        exports.renew_lease("job", "flush", token, now=at, seconds=60)
    except LeaseLost:
        return False
    return True
