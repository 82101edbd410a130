"""Provider limits as decisions: sliding windows, slots, priority, fairness, learning from 429s."""

from datetime import UTC, datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st

from sluice.domain.limits import (
    Backoff,
    Hold,
    Shard,
    StepAside,
    Take,
    Wait,
    admit,
    after_rate_limited,
    candidate_shards,
    current_factor,
    decide_permit,
    fair_share,
    live_holds,
    shard_caps,
    shard_shares,
    usable_shards,
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
    calls: list[float] = []
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
    calls = [T0.timestamp(), T0.timestamp() + 10]
    ok, _, wait = admit(calls, now=T0 + timedelta(seconds=20), cap=2)
    assert not ok and wait == 40.0


def shards(*held: tuple[str | None, ...], slots: int = 2, rate: int = 100) -> list[Shard]:
    """One shard per tuple, holding a live permit for each tenant named in it."""
    until = T0 + timedelta(minutes=1)
    return [
        Shard(i, slots, rate, tuple(Hold(f"h{i}{n}", t, until) for n, t in enumerate(ts) if t))
        for i, ts in enumerate(held)
    ]


def permit(shards_read: list[Shard], tenant: str, *, interactive: bool = False, **rules):
    rules.setdefault("backlog", {})
    return decide_permit(shards_read, now=T0, token="new", until=T0 + timedelta(seconds=30),
                         tenant=tenant, interactive=interactive, pick=lambda places: places[0],
                         **rules)  # fmt: skip


def test_shares_split_the_usable_slots_and_budget_over_the_same_shards():
    assert shard_shares(10, 600, 5, 1.0) == [(2, 120)] * 5
    # Fewer slots than shards: the budget goes only where a slot can use it.
    assert shard_shares(3, 600, 5, 1.0) == [(1, 200), (1, 200), (1, 200), (0, 0), (0, 0)]
    # Learned from a 429: half of each, on fewer shards.
    assert shard_shares(10, 600, 5, 0.5) == [(1, 60)] * 5
    assert shard_shares(4, 600, 5, 0.5) == [(1, 150), (1, 150), (0, 0), (0, 0), (0, 0)]


@given(st.integers(1, 500), st.integers(1, 10_000), st.integers(1, 20), st.floats(0.1, 1.0))
def test_shares_never_add_up_to_more_than_the_limits(concurrent, rpm, n, factor):
    shares = shard_shares(concurrent, rpm, n, factor)
    assert len(shares) == n
    assert sum(s for s, _ in shares) <= max(1, concurrent * factor)
    assert sum(r for _, r in shares) <= max(1, rpm * factor)


def test_bulk_work_leaves_a_reserve_to_interactive_work():
    # Ten slots over five shards: bulk work may use the first four (8 slots).
    busy = shards(("a", "a"), ("a", "a"), ("a", "a"), ("a", "a"), ())
    assert permit(busy, "a") == Wait(0.1)
    taken = permit(busy, "w", interactive=True)
    assert isinstance(taken, Take) and taken.shard == 4
    assert [h.token for h in taken.holds] == ["new"] and taken.calls == (T0.timestamp(),)
    assert candidate_shards([5, 5, 5, 5, 5], interactive=False) == [0, 1, 2, 3]


def test_a_permit_goes_where_a_slot_and_a_place_in_the_window_are_both_free():
    full_window = Shard(0, 2, 1, (), (T0.timestamp() - 20,))
    free = Shard(1, 2, 1)
    assert permit([full_window, free, Shard(2, 2, 1)], "a").shard == 1  # type: ignore[union-attr]
    # Slots free, windows full: wait until the first place frees (40 s), not a moment more.
    assert permit([full_window, full_window, Shard(2, 2, 1)], "a") == Wait(40.0)


def test_the_largest_backlog_yields_its_turn_once_it_holds_its_share():
    # 8 bulk slots, two tenants waiting: a's share is 4.
    backlog = {"a": 9000, "b": 20}
    held = shards(("a", "a"), ("a", "a"), (), (), ())
    assert permit(held, "a", backlog=backlog) == StepAside()
    # Below its share it takes a slot; the smaller backlog never yields, whatever it holds.
    held = shards(("a", "a"), ("a", "b"), ("b", "b"), ("b", "b"), ())
    live = [h for s in held for h in s.live(T0)]
    assert not yields_turn(live, allowed=8, tenant="a", backlog=backlog)
    assert not yields_turn(live, allowed=8, tenant="b", backlog=backlog)
    assert permit(held, "b", backlog=backlog) == Wait(0.1)  # no bulk slot free
    # Alone, a tenant never yields: there is nobody to yield to.
    alone = shards(("a", "a"), ("a", "a"), ("a", "a"), ("a",), ())
    taken = permit(alone, "a", backlog={"a": 9000})
    assert isinstance(taken, Take) and taken.shard == 3


def test_fair_shares_split_the_bulk_slots_among_holders_and_waiting_tenants():
    live = [h for s in shards(("a",), ("b",)) for h in s.live(T0)]
    assert fair_share(live, allowed=8, tenant="a", backlog={"c": 5}) == (1, 3)
    assert fair_share(live, allowed=8, tenant="a", backlog={}) == (1, 4)
    assert fair_share([], allowed=1, tenant="a", backlog={"b": 1}) == (0, 1)


def test_expired_permits_of_dead_holders_are_free_again():
    stale = Shard(0, 1, 10, (Hold("dead", "a", T0 - timedelta(seconds=1)),))
    taken = permit([stale], "a", interactive=True)
    assert isinstance(taken, Take) and [h.token for h in taken.holds] == ["new"]


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
    held = shards(("a", "a"), (), (), (), ())
    assert permit(held, "a", per_tenant=2) == Wait(0.1)
    assert isinstance(permit(held, "b", per_tenant=2), Take)
    assert isinstance(permit(held, "a"), Take)


def test_a_capped_holders_record_counts_only_permits_still_live():
    held = {"live": T0 + timedelta(seconds=5), "crashed": T0 - timedelta(seconds=1)}
    assert live_holds(held, T0) == {"live": T0 + timedelta(seconds=5)}
    # The count from the record decides, whatever the shards show.
    free = shards((), (), (), (), ())
    assert permit(free, "n", interactive=True, per_tenant=1, holding=1) == Wait(0.1)
    assert isinstance(permit(free, "n", interactive=True, per_tenant=1, holding=0), Take)


def test_with_a_single_shard_bulk_work_leaves_a_part_of_its_budget():
    # One call at once: one shard, which bulk work shares, leaving a fifth of its rate.
    shares = shard_shares(1, 30, 5, 1.0)
    assert usable_shards(shares, interactive=False) == {0: 24}
    assert usable_shards(shares, interactive=True) == {0: 30}
    # Several: bulk work leaves the last shard whole, and takes the others' whole budget.
    assert usable_shards(shard_shares(10, 600, 5, 1.0), interactive=False) == dict.fromkeys(
        range(4), 120
    )
