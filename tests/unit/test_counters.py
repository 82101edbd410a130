"""Counter shards: counts derived from moves always add up to the total."""

import random

from hypothesis import given
from hypothesis import strategies as st

from sluice.domain.counters import OPEN, delta, initial_shards, shard_of, sum_shards
from sluice.domain.items import ItemState

STATES = list(ItemState)


def test_a_new_job_counts_every_item_as_queued():
    counts = sum_shards(7, initial_shards(7, 4))
    assert counts.by_state["queued"] == 7 and counts.finished == 0 and not counts.complete


def test_moves_to_the_same_state_change_nothing():
    assert delta(ItemState.RUNNING, ItemState.RUNNING) == {}


@given(
    st.lists(st.tuples(st.sampled_from(STATES), st.sampled_from(STATES)), max_size=60),
    st.integers(1, 8),
)
def test_counts_always_add_up_to_the_total_whatever_shards_take_the_moves(moves, n_shards):
    total = 10
    shards = initial_shards(total, n_shards)
    rng = random.Random(0)
    for before, after in moves:
        shard = shards[rng.randrange(n_shards)]
        for state, change in delta(before, after).items():
            shard[state] += change
    counts = sum_shards(total, shards)
    assert sum(counts.by_state.values()) == total


def test_progress_and_completion_count_every_finished_state():
    counts = sum_shards(4, [{"succeeded": 2, "failed": 1, "cancelled": 1}, None])
    assert counts.finished == 4 and counts.complete and counts.progress == 1.0


@given(
    st.integers(1, 40),
    st.integers(1, 8),
    st.lists(st.tuples(st.integers(0, 39), st.sampled_from(STATES)), max_size=200),
)
def test_only_the_commit_that_empties_a_shard_of_open_items_need_look_for_completion(
    total, n_shards, moves
):
    """Each shard's open count is exactly its unfinished items, and the move that finishes the
    job's last open item is always one that leaves its own shard at zero."""
    shards = initial_shards(total, n_shards)
    states = [ItemState.QUEUED] * total
    for index, after in moves:
        index %= total
        moved = delta(states[index], after)
        shard = shards[shard_of(index, n_shards)]
        for field, change in moved.items():
            shard[field] += change
        states[index] = after
        unfinished = [i for i in range(total) if not states[i].finished]
        for k in range(n_shards):
            assert shards[k][OPEN] == sum(1 for i in unfinished if shard_of(i, n_shards) == k)
        if OPEN in moved and moved[OPEN] < 0 and not unfinished:
            assert shard[OPEN] == 0  # this commit would have checked, and found the job done
    assert sum_shards(total, shards).complete == all(s.finished for s in states)
