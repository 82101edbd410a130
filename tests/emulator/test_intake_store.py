"""The intake store on the Firestore emulator: a day's job and its items, as a burst of
deliveries adds them."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime

from testkit.stores import stores


def test_a_burst_of_first_messages_creates_the_day_once_and_counts_each_message_once(db):
    """Many users' first messages of a day arrive at once, each delivered twice: every one is
    added (none waits out a lock until it fails), the day is created once, counted right."""
    store = stores(db, shards=4)
    day = {"tenant": "t", "state": "open", "open_ended": True}

    def deliver(n: int) -> bool:
        store.intake.ensure_job("day", day)
        return store.intake.add_item("day", f"m{n % 40}", {"text": n}, at=datetime.now(UTC))

    with ThreadPoolExecutor(16) as pool:
        added = list(pool.map(deliver, range(80)))
    assert sum(added) == 40
    found = store.jobs.job_with_counts("day")
    assert found is not None
    job, counts = found
    assert job["tenant"] == "t" and counts.total == 40 and counts.by_state["queued"] == 40
    assert len(store.intake.item_ids("day")) == 40
    # Created once: a second creation changes nothing.
    assert store.intake.create_job("day", {**day, "total": 0}) is False
    assert store.jobs.job_with_counts("day")[1].by_state["queued"] == 40  # type: ignore[index]
