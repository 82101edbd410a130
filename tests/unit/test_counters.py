"""Counter shards: counts derived from moves always add up to the total."""

import random

from hypothesis import given
from hypothesis import strategies as st

from sluice.domain.counters import delta, initial_shards, sum_shards
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
