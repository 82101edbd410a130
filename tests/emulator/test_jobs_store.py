"""The job store on the Firestore emulator: transactions keep states, counts and completion."""

from __future__ import annotations

import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from functools import partial

import pytest
from google.api_core.exceptions import Aborted

from sluice.adapters.exports_store import ExportStore
from sluice.adapters.intake_store import NewItem
from sluice.domain.intake import InFlight, Mismatch, Own, Stage
from sluice.domain.items import AlreadyFinished, Claimed, LeaseHeld, after_error, succeed
from sluice.handlers.dead_letters import fail_item
from testkit.stores import Stores, stores


@pytest.fixture
def store(db) -> Stores:
    return stores(db, shards=4)


def new_job(store: Stores, n: int, job_id: str = "job") -> str:
    store.intake.create_job(
        job_id, {"tenant": "t", "total": n, "state": "open", "fingerprint": "f"}
    )
    items = [NewItem(f"i{k}", k, {"k": k}) for k in range(n)]
    store.intake.write_items(job_id, items, at=datetime.now(UTC))
    return job_id


def claim(store: Stores, job: str, item: str):
    result = store.items.claim_item(
        job, item, token=uuid.uuid4().hex, lease_seconds=60, max_attempts=3
    )
    assert result is not None
    return result.decision


JOB = {"tenant": "t", "total": 1, "state": "open", "fingerprint": "a"}
LEASE = timedelta(seconds=30)


def test_the_same_id_with_another_fingerprint_is_a_conflict(store):
    _, first = store.intake.open_intake("j", JOB, owner="o1", lease=LEASE)
    assert isinstance(first, Own) and first.stage is Stage.WRITING
    # The stored job wins, and another body under the key is refused.
    stored, again = store.intake.open_intake("j", {**JOB, "total": 9}, owner="o2", lease=LEASE)
    assert isinstance(again, InFlight) and stored["total"] == 1
    _, other = store.intake.open_intake("j", {**JOB, "fingerprint": "b"}, owner="o3", lease=LEASE)
    assert isinstance(other, Mismatch)


def test_concurrent_submissions_own_the_intake_once(store):
    def attempt(n: int) -> object:
        return store.intake.open_intake("j", JOB, owner=f"o{n}", lease=LEASE)[1]

    with ThreadPoolExecutor(6) as pool:
        decisions = list(pool.map(attempt, range(6)))
    # One owns it; the others are told it is in flight (some when Firestore's contention
    # between their transactions gave up on them).
    assert sum(isinstance(d, Own) for d in decisions) == 1
    assert sum(isinstance(d, InFlight) for d in decisions) == 5


def test_an_owner_that_lost_its_lease_cannot_advance_the_intake(store):
    store.intake.open_intake("j", JOB, owner="slow", lease=timedelta(seconds=-1))  # already ran out
    _, taken = store.intake.open_intake("j", JOB, owner="next", lease=LEASE)
    assert isinstance(taken, Own) and taken.stage is Stage.WRITING
    assert not store.intake.advance_intake("j", owner="slow", to=Stage.ITEMS_WRITTEN, lease=LEASE)
    assert not store.intake.release_intake("j", owner="slow")
    assert store.intake.advance_intake("j", owner="next", to=Stage.PUBLISHED, lease=LEASE)
    assert store.jobs.get_job("j")["intake"] == "published"


def test_writing_items_again_never_overwrites_one(store):
    job = new_job(store, 3)
    claim(store, job, "i1")  # processed meanwhile
    items = [NewItem(f"i{k}", k, {"k": k}) for k in range(600)]  # more than one commit
    store.intake.write_items(job, items, at=datetime.now(UTC))
    assert store.items.read_item(job, "i1").doc["state"] == "running"
    assert len(store.intake.item_ids(job)) == 600


def test_concurrent_deliveries_of_one_item_claim_it_once(store):
    job = new_job(store, 1)
    # As the processor does: each delivery reads the item, then claims it on condition that it
    # is unchanged; the losers decide again in a transaction on what is stored now.
    seen = [store.items.read_item(job, "i0") for _ in range(8)]

    def attempt(n: int) -> object:
        try:
            result = store.items.claim_item(
                job, "i0", token=uuid.uuid4().hex, lease_seconds=60, max_attempts=3, seen=seen[n]
            )
        except (ValueError, Aborted) as contended:  # the transaction gave up: redelivered
            return contended
        assert result is not None
        return result.decision

    with ThreadPoolExecutor(8) as pool:
        decisions = list(pool.map(attempt, range(8)))
    assert sum(isinstance(d, Claimed) for d in decisions) == 1
    assert all(isinstance(d, Claimed | LeaseHeld | ValueError | Aborted) for d in decisions)
    counts = store.jobs.job_with_counts(job)[1]
    assert counts.by_state["running"] == 1 and counts.by_state["queued"] == 0


def test_a_result_is_recorded_once_and_the_job_completes_once(store):
    job = new_job(store, 20)
    tokens = {}
    for k in range(20):
        decision = claim(store, job, f"i{k}")
        tokens[f"i{k}"] = decision.token

    def finish(item: str) -> int | None:
        change = store.items.finish_item(
            job, item, token=tokens[item], decide=partial(succeed, result={"ok": item},
                                                          now=datetime.now(UTC))
        )  # fmt: skip
        assert change is not None
        return store.jobs.complete_if_done(job)

    with ThreadPoolExecutor(8) as pool:
        completions = list(pool.map(finish, list(tokens)))
    assert [c for c in completions if c is not None] == [1]
    job_doc, counts = store.jobs.job_with_counts(job)
    assert job_doc["state"] == "completed" and counts.by_state["succeeded"] == 20
    # A late or repeated outcome from an old claim changes nothing.
    again = partial(succeed, result={}, now=datetime.now(UTC))
    stale = store.items.finish_item(job, "i0", token=tokens["i0"], decide=again)
    assert stale is None
    assert isinstance(claim(store, job, "i0"), AlreadyFinished)
    assert store.jobs.complete_if_done(job) is None


def test_items_are_listed_by_state_in_pages(store):
    job = new_job(store, 7)
    claim(store, job, "i3")
    first = store.items.list_items(job, state="queued", limit=4, after=None)
    rest = store.items.list_items(job, state="queued", limit=4, after=first[-1][0])
    ids = [i for i, _ in first + rest]
    assert len(ids) == 6 and "i3" not in ids and len(set(ids)) == 6
    assert [i for i, _ in store.items.list_items(job, state="running", limit=5, after=None)] == [
        "i3"
    ]


def test_an_outcome_from_a_claim_taken_over_is_dropped_even_on_the_conditional_path(store):
    job = new_job(store, 1)

    def claim_as(token: str, lease_seconds: int):
        seen = store.items.read_item(job, "i0")
        return store.items.claim_item(
            job, "i0", token=token, lease_seconds=lease_seconds, max_attempts=3, seen=seen
        )

    first = claim_as("first", lease_seconds=0)
    assert first is not None and isinstance(first.decision, Claimed) and first.after is not None
    # Its lease (0 s) expired: another delivery takes the item over and finishes it.
    second = claim_as("second", lease_seconds=60)
    assert second is not None and isinstance(second.decision, Claimed)
    won = partial(succeed, result={"by": "second"}, now=datetime.now(UTC))
    assert store.items.finish_item(job, "i0", token="second", decide=won, seen=second.after)
    # The first worker comes back with the item as its claim left it: stale, so dropped.
    late = partial(succeed, result={"by": "first"}, now=datetime.now(UTC))
    assert store.items.finish_item(job, "i0", token="first", decide=late, seen=first.after) is None
    doc = store.items.read_item(job, "i0")
    assert doc is not None and doc.doc["result"] == {"by": "second"}
    assert store.jobs.job_with_counts(job)[1].by_state["succeeded"] == 1


def test_a_dead_lettered_whatsapp_retry_fails_its_item_whatever_its_dispatch(db):
    store = stores(db, shards=2)
    store.intake.create_job("day", {"tenant": "t", "total": 2, "state": "open", "fingerprint": "f"})
    store.intake.write_items(
        "day", [NewItem("m1", 0, "x"), NewItem("w1", 1, "y")], at=datetime.now(UTC)
    )
    for item in ("m1", "w1"):  # retry-failed stamped a dispatch on both
        store.paths.item_ref("day", item).update({"dispatch": 5})
    # A work item's older message is superseded: the item stays for the newer one.
    assert fail_item(store, "day", "w1", "dead-lettered", dispatch=0).state == "unchanged"
    # A WhatsApp event carries no dispatch: its dead letter fails the item.
    assert fail_item(store, "day", "m1", "dead-lettered").state == "failed"


def _claimed(store: Stores, job: str, item: str):
    """Claim `item` on the conditional path: (token, the item as the claim left it)."""
    token = uuid.uuid4().hex
    result = store.items.claim_item(job, item, token=token, lease_seconds=60, max_attempts=3,
                                    seen=store.items.read_item(job, item))  # fmt: skip
    assert result is not None and isinstance(result.decision, Claimed)
    return token, result.after


def _finish(store: Stores, job: str, item: str, decide=None, *, conditional: bool = True):
    token, after = _claimed(store, job, item)
    decide = decide or partial(succeed, result={"content": f"answer {item}"}, now=datetime.now(UTC))
    return store.items.finish_item(job, item, token=token, decide=decide,
                                   seen=after if conditional else None, kind="batch")  # fmt: skip


def _rows(db, job: str) -> dict[str, dict]:
    rows = db.collection("jobs").document(job).collection("exports").document("sheets")
    return {s.id: s.to_dict() for s in rows.collection("rows").stream()}


@pytest.mark.parametrize("conditional", [True, False], ids=["conditional", "transaction"])
def test_a_success_is_queued_for_the_export_in_its_own_commit_once_the_export_exists(
    store, db, conditional
):
    job = new_job(store, 4)
    export = db.document(f"jobs/{job}/exports/sheets")
    assert _finish(store, job, "i0", conditional=conditional) is not None
    # No export: nothing queued, and the commit's assertion left no export behind.
    assert _rows(db, job) == {} and not export.get().exists
    # The export is created after this process last saw none: the next success is queued.
    assert ExportStore(db).create(job, {"kind": "batch"}, grid_rows=1000)
    assert _finish(store, job, "i1", conditional=conditional) is not None
    assert _finish(store, job, "i2", conditional=conditional) is not None
    rows = _rows(db, job)
    assert set(rows) == {"i1", "i2"}
    assert rows["i1"]["row"] is None and rows["i1"]["written"] is False
    assert rows["i1"]["values"][:3] == ["i1", '{"k": 1}', "answer i1"]
    # A failure is never queued; the counts hold whatever path the commit took.
    failed = partial(
        after_error, reason="no", permanent=True, max_attempts=3, now=datetime.now(UTC)
    )
    assert _finish(store, job, "i3", failed, conditional=conditional) is not None
    assert set(_rows(db, job)) == {"i1", "i2"}
    counts = store.jobs.job_with_counts(job)[1].by_state
    assert (counts["succeeded"], counts["failed"]) == (3, 1)
