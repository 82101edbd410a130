"""Provider limits as decisions: sliding windows, slots, priority, fairness, learning from 429s."""

from datetime import UTC, datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st

from sluice.domain.limits import (
    Backoff,
    Slot,
    admit,
    after_rate_limited,
    candidate_shards,
    candidate_slots,
    current_factor,
    fair_share,
    live_holds,
    shard_caps,
    usable_slots,
    yields_turn,
)

T0 = datetime(2026, 1, 1, tzinfo=UTC)
RECOVERY = timedelta(seconds=30)


@given(st.integers(1, 5000), st.integers(1, 20), st.floats(0.1, 1.0))
def test_shard_caps_never_add_up_to_more_than_the_limit(rpm, shards, factor):
    caps = shard_caps(rpm, shards, factor)
    assert len(caps) == shards and sum(caps) <= max(1, rpm * factor) and min(caps) >= 0


@given(st.lists(st.floats(0, 300), max_size=200), st.integers(1, 20))
def test_a_shard_never_admits_more_than_its_cap_in_any_sliding_minute(offsets, cap):
    calls: list[datetime] = []
    admitted_at: list[datetime] = []
    for offset in sorted(offsets):
        now = T0 + timedelta(seconds=offset)
        ok, calls, _ = admit(calls, now=now, cap=cap)
        if ok:
            admitted_at.append(now)
    for start in admitted_at:
        in_window = [t for t in admitted_at if start <= t < start + timedelta(seconds=60)]
        assert len(in_window) <= cap


def test_a_full_window_says_when_a_place_frees():
    calls = [T0, T0 + timedelta(seconds=10)]
    ok, _, wait = admit(calls, now=T0 + timedelta(seconds=20), cap=2)
    assert not ok and wait == 40.0


def slots(*tenants: str | None) -> list[Slot]:
    until = T0 + timedelta(minutes=1)
    return [Slot(i, f"h{i}" if t else None, t, until if t else None) for i, t in enumerate(tenants)]


def test_bulk_work_leaves_a_reserve_to_interactive_work():
    all_free = slots(*[None] * 10)
    bulk = candidate_slots(all_free, now=T0, usable=10, tenant="a", interactive=False)
    interactive = candidate_slots(all_free, now=T0, usable=10, tenant="a", interactive=True)
    assert len(bulk) == 8 and len(interactive) == 10
    busy = slots(*["a"] * 8, None, None)
    assert candidate_slots(busy, now=T0, usable=10, tenant="a", interactive=False) == []
    assert candidate_slots(busy, now=T0, usable=10, tenant="w", interactive=True) == [8, 9]
    assert candidate_shards([5, 5, 5, 5, 5], interactive=False) == [0, 1, 2, 3]


def test_the_largest_backlog_yields_its_turn_once_it_holds_its_share():
    # 8 bulk slots, two tenants waiting: a's share is 4.
    backlog = {"a": 9000, "b": 20}
    held = slots("a", "a", "a", "a", None, None, None, None, None, None)
    assert yields_turn(held, now=T0, usable=10, tenant="a", backlog=backlog)
    assert candidate_slots(held, now=T0, usable=10, tenant="a", interactive=False,
                           backlog=backlog) == []  # fmt: skip
    # Below its share it takes a slot; the smaller backlog never yields, whatever it holds.
    held = slots("a", "a", "a", "b", "b", "b", "b", "b", None, None)
    assert not yields_turn(held, now=T0, usable=10, tenant="a", backlog=backlog)
    assert not yields_turn(held, now=T0, usable=10, tenant="b", backlog=backlog)
    assert (
        candidate_slots(held, now=T0, usable=10, tenant="b", interactive=False, backlog=backlog)
        == []
    )  # fmt: skip
    # Alone, a tenant never yields: there is nobody to yield to.
    alone = slots(*["a"] * 7, None, None, None)
    assert not yields_turn(alone, now=T0, usable=10, tenant="a", backlog={"a": 9000})
    assert candidate_slots(alone, now=T0, usable=10, tenant="a", interactive=False,
                           backlog={"a": 9000}) == [7]  # fmt: skip


def test_fair_shares_split_the_bulk_slots_among_holders_and_waiting_tenants():
    held = slots("a", "b", None, None, None, None, None, None, None, None)
    assert fair_share(held, now=T0, usable=10, tenant="a", backlog={"c": 5}) == (1, 3)
    assert fair_share(held, now=T0, usable=10, tenant="a", backlog={}) == (1, 4)
    assert fair_share(slots(None), now=T0, usable=1, tenant="a", backlog={"b": 1}) == (0, 1)


def test_expired_slots_of_dead_holders_are_free_again():
    stale = [Slot(0, "dead", "a", T0 - timedelta(seconds=1))]
    assert candidate_slots(stale, now=T0, usable=1, tenant="a", interactive=True) == [0]


def test_a_429_halves_the_share_pauses_and_recovers_gradually():
    learned = after_rate_limited(Backoff(), T0, 2.0, RECOVERY)
    assert learned.factor == 0.5 and learned.paused_until == T0 + timedelta(seconds=2)
    assert current_factor(learned, T0 + timedelta(seconds=15), RECOVERY) == 0.75
    assert current_factor(learned, T0 + timedelta(seconds=30), RECOVERY) == 1.0
    again = after_rate_limited(learned, T0 + timedelta(seconds=1), None, RECOVERY)
    assert 0.1 <= again.factor < 0.5
    assert usable_slots(10, again.factor) >= 1
    floor = Backoff()
    for n in range(20):
        floor = after_rate_limited(floor, T0 + timedelta(milliseconds=n), None, RECOVERY)
    assert floor.factor == 0.1


def test_a_tenant_holds_at_most_its_cap_so_others_find_a_slot():
    # A tenant whose endpoint hangs holds 2 slots of 10: it gets no third, another tenant does.
    held = slots("a", "a", *[None] * 8)
    capped = {"now": T0, "usable": 10, "interactive": False, "per_tenant": 2}
    assert candidate_slots(held, tenant="a", **capped) == []
    assert candidate_slots(held, tenant="b", **capped) == [2, 3, 4, 5, 6, 7]
    assert candidate_slots(held, now=T0, usable=10, tenant="a", interactive=False) != []


def test_a_capped_holders_record_counts_only_permits_still_live():
    held = {"live": T0 + timedelta(seconds=5), "crashed": T0 - timedelta(seconds=1)}
    assert live_holds(held, T0) == {"live": T0 + timedelta(seconds=5)}
    # The count from the record decides, whatever the slots show.
    capped = {"now": T0, "usable": 10, "interactive": True, "per_tenant": 1}
    assert candidate_slots(slots(*[None] * 10), tenant="n", holding=1, **capped) == []
    assert candidate_slots(slots(*[None] * 10), tenant="n", holding=0, **capped) != []
