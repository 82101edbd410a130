"""The item state machine: what a delivery may do, decided from what is stored and the time."""

from datetime import UTC, datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st

from sluice.domain.items import (
    AlreadyFinished,
    Claimed,
    ItemRecord,
    ItemState,
    LeaseHeld,
    Transition,
    after_error,
    claim,
    dead_lettered,
    dispatch_at,
    holds_lease,
    retry,
    stalled,
    succeed,
    superseded,
)

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def do_claim(item: ItemRecord, max_attempts: int = 3):
    return claim(item, now=NOW, token="t2", lease_seconds=30, max_attempts=max_attempts)


def test_a_queued_item_is_claimed_with_a_lease_and_an_attempt():
    decision = do_claim(ItemRecord(ItemState.QUEUED))
    assert isinstance(decision, Claimed)
    assert decision.attempt == 1
    assert decision.transition.after is ItemState.RUNNING
    assert decision.transition.fields["lease"] == {
        "token": "t2",
        "until": NOW + timedelta(seconds=30),
    }


def test_finished_items_are_never_worked_again():
    for state in (ItemState.SUCCEEDED, ItemState.FAILED, ItemState.CANCELLED):
        assert do_claim(ItemRecord(state, attempts=1)) == AlreadyFinished(state)


def test_a_live_lease_sends_the_delivery_back_for_later():
    until = NOW + timedelta(seconds=5)
    item = ItemRecord(ItemState.RUNNING, attempts=1, lease_token="t1", lease_until=until)
    assert do_claim(item) == LeaseHeld(until)


def test_an_expired_lease_is_taken_over_by_the_next_delivery():
    item = ItemRecord(
        ItemState.RUNNING, attempts=1, lease_token="t1", lease_until=NOW - timedelta(seconds=1)
    )
    decision = do_claim(item)
    assert isinstance(decision, Claimed)
    assert decision.attempt == 2 and decision.token == "t2"


def test_an_expired_lease_on_the_last_attempt_fails_the_item():
    item = ItemRecord(
        ItemState.RUNNING, attempts=3, lease_token="t1", lease_until=NOW - timedelta(seconds=1)
    )
    decision = do_claim(item, max_attempts=3)
    assert isinstance(decision, Transition)
    assert decision.after is ItemState.FAILED
    assert "3 attempts" in decision.fields["error"]


def test_only_the_current_lease_holder_may_record_a_result():
    item = ItemRecord(ItemState.RUNNING, attempts=2, lease_token="new")
    assert holds_lease(item, "new")
    assert not holds_lease(item, "old")
    assert not holds_lease(ItemRecord(ItemState.SUCCEEDED, lease_token="new"), "new")


def test_success_records_the_result_and_the_finish_time():
    change = succeed(ItemRecord(ItemState.RUNNING, attempts=1), result={"content": "x"}, now=NOW)
    assert change.after is ItemState.SUCCEEDED
    assert change.fields["result"] == {"content": "x"}
    assert change.fields["finished_at"] == NOW


def test_errors_requeue_until_attempts_run_out_and_permanent_ones_fail_at_once():
    running = ItemRecord(ItemState.RUNNING, attempts=1)
    assert after_error(running, reason="503", permanent=False, max_attempts=3, now=NOW).after is (
        ItemState.QUEUED
    )
    assert after_error(running, reason="400", permanent=True, max_attempts=3, now=NOW).after is (
        ItemState.FAILED
    )
    spent = ItemRecord(ItemState.RUNNING, attempts=3)
    last = after_error(spent, reason="503", permanent=False, max_attempts=3, now=NOW)
    assert last.after is ItemState.FAILED and "after 3 attempts" in last.fields["error"]


@given(st.lists(st.sampled_from(["claim", "ok", "transient", "permanent", "expire"]), max_size=40))
def test_any_sequence_of_events_ends_finished_at_most_once(events):
    """Whatever happens, an item finishes at most once and never exceeds its attempts."""
    item, token, finished_count = ItemRecord(ItemState.QUEUED), None, 0
    clock = NOW
    for event in events:
        clock += timedelta(seconds=1)
        if event == "claim":
            d = claim(item, now=clock, token=f"t{clock.second}", lease_seconds=10, max_attempts=3)
            change = (
                d.transition if isinstance(d, Claimed) else d if isinstance(d, Transition) else None
            )
            if isinstance(d, Claimed):
                token = d.token
            if change:
                item = ItemRecord(
                    ItemState(change.fields["state"]),
                    change.fields.get("attempts", item.attempts),
                    token if isinstance(d, Claimed) else None,
                    change.fields["lease"]["until"] if change.fields.get("lease") else None,
                )
                finished_count += item.state.finished
        elif event == "expire":
            clock += timedelta(seconds=60)
        elif token and holds_lease(item, token):
            if event == "ok":
                change = succeed(item, result={}, now=clock)
            else:
                change = after_error(
                    item, reason="e", permanent=event == "permanent", max_attempts=3, now=clock
                )
            item = ItemRecord(change.after, item.attempts)
            finished_count += item.state.finished
        assert item.attempts <= 3
    assert finished_count <= 1


def test_a_dead_letter_fails_a_waiting_item_with_its_reason_and_nothing_else():
    queued = dead_lettered(ItemRecord(ItemState.QUEUED, attempts=2), reason="gave up", now=NOW)
    assert queued is not None and queued.after is ItemState.FAILED
    assert queued.fields["error"] == "gave up" and queued.fields["finished_at"] == NOW
    expired = ItemRecord(ItemState.RUNNING, 1, "t1", NOW - timedelta(seconds=1))
    assert dead_lettered(expired, reason="gave up", now=NOW) is not None
    live = ItemRecord(ItemState.RUNNING, 1, "t1", NOW + timedelta(seconds=1))
    assert dead_lettered(live, reason="gave up", now=NOW) is None
    for state in (ItemState.SUCCEEDED, ItemState.FAILED, ItemState.CANCELLED):
        assert dead_lettered(ItemRecord(state), reason="gave up", now=NOW) is None


def test_a_batch_is_stalled_once_nothing_moved_for_the_stall_period():
    stall = timedelta(seconds=120)
    assert not stalled(NOW - timedelta(seconds=119), now=NOW, stall=stall)
    assert stalled(NOW - timedelta(seconds=120), now=NOW, stall=stall)


def test_a_message_older_than_the_items_latest_dispatch_is_superseded():
    sent_again = ItemRecord(ItemState.QUEUED, dispatch=dispatch_at(NOW))
    assert superseded(sent_again, 0)  # the intake's message, still waiting for capacity
    assert superseded(sent_again, dispatch_at(NOW - timedelta(milliseconds=1)))
    assert not superseded(sent_again, dispatch_at(NOW))  # the newest message itself
    assert not superseded(ItemRecord.from_doc({"state": "queued"}), 0)  # never sent again
    assert dispatch_at(NOW + timedelta(seconds=1)) > dispatch_at(NOW)


def test_retry_failed_stamps_the_dispatch_its_messages_carry():
    change = retry(ItemRecord(ItemState.FAILED, attempts=5, dispatch=1), now=NOW)
    assert change is not None
    again = ItemRecord.from_doc({**change.fields})
    assert again.dispatch == dispatch_at(NOW) and not superseded(again, dispatch_at(NOW))


def test_retry_failed_keeps_the_steps_that_succeeded_and_forgets_the_rest():
    steps = {"intent": {"content": "x"}}
    doc = {"state": "failed", "attempts": 5, "progress": {"steps": steps, "reply": {"sent": 1}}}
    change = retry(ItemRecord.from_doc(doc), now=NOW)
    assert change is not None and change.fields["progress"] == {
        "steps": {"intent": {"content": "x"}}
    }
    plain = retry(ItemRecord.from_doc({"state": "failed", "progress": {"reply": {}}}), now=NOW)
    assert plain is not None and plain.fields["progress"] is None
