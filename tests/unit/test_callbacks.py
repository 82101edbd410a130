"""Which delivery of a completion's callback calls the CRM: one live chain, on its backoff."""

from datetime import UTC, datetime, timedelta

from sluice.domain.callbacks import Turn, needs_sending_again, turn

T0 = datetime(2026, 1, 1, tzinfo=UTC)
QUIET = timedelta(seconds=635)


def decide(callback: dict, chain: str = "m1", at: datetime = T0) -> Turn:
    return turn(callback, completion=1, chain=chain, now=at, quiet=QUIET)


def test_the_first_delivery_sends_and_a_settled_callback_sends_nothing():
    assert decide({"completion": 1, "state": "pending"}) is Turn.SEND
    assert decide({"completion": 1, "state": "sent"}) is Turn.SETTLED
    assert decide({"completion": 2, "state": "pending"}) is Turn.SETTLED


def test_another_message_steps_aside_while_the_owning_chain_is_alive():
    owned = {"completion": 1, "state": "pending", "chain": "m1", "delivered_at": T0}
    assert decide(owned, chain="m2", at=T0 + timedelta(minutes=5)) is Turn.STEP_ASIDE
    # No delivery of m1 for longer than a live chain stays silent: m2 takes the callback over.
    assert decide(owned, chain="m2", at=T0 + QUIET + timedelta(seconds=1)) is Turn.SEND


def test_the_chain_waits_for_its_own_lease_and_its_backoff():
    leased = {"completion": 1, "state": "pending", "chain": "m1", "delivered_at": T0,
              "leased_until": T0 + timedelta(seconds=30)}  # fmt: skip
    assert decide(leased, at=T0 + timedelta(seconds=1)) is Turn.WAIT
    assert decide(leased, at=T0 + timedelta(seconds=31)) is Turn.SEND
    failed = {"completion": 1, "state": "pending", "chain": "m1", "delivered_at": T0,
              "leased_until": None, "retry_at": T0 + timedelta(seconds=5)}  # fmt: skip
    assert decide(failed, at=T0 + timedelta(seconds=2)) is Turn.WAIT
    assert decide(failed, at=T0 + timedelta(seconds=5, milliseconds=1)) is Turn.SEND


def test_the_sweeper_sends_again_only_what_no_chain_touched_for_the_quiet_time():
    pending = {"completion": 1, "state": "pending"}
    late = T0 + QUIET + timedelta(seconds=1)
    assert needs_sending_again(pending, completed_at=T0, now=late, quiet=QUIET)
    assert not needs_sending_again(pending, completed_at=T0, now=T0 + QUIET, quiet=QUIET)
    touched = pending | {"delivered_at": T0 + timedelta(minutes=5)}
    assert not needs_sending_again(touched, completed_at=T0, now=late, quiet=QUIET)
    stamped = pending | {"sent_again_at": T0 + timedelta(minutes=5)}
    assert not needs_sending_again(stamped, completed_at=T0, now=late, quiet=QUIET)
    assert not needs_sending_again(
        {"completion": 1, "state": "sent"}, completed_at=T0, now=late, quiet=QUIET
    )
