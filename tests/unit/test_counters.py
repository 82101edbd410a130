"""Counter shards: counts derived from moves always add up to the total."""

import random
from collections import Counter
from datetime import UTC, datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st

from sluice.domain.counters import (
    OPEN,
    calls_left,
    delta,
    estimate_completion,
    initial_shards,
    shard_of,
    step_moves,
    step_state,
    sum_shards,
)
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


# -- counts per step of a pipeline ----------------------------------------------------------------

STEPS = ("a", "b", "c")
T0 = datetime(2026, 12, 8, tzinfo=UTC)


def item_docs() -> st.SearchStrategy[dict]:
    """An item as stored at any point of a three-step pipeline: its state, the steps whose
    outputs are recorded, the runs under way or ended, the step it failed at."""
    run = st.fixed_dictionaries({"started_at": st.just(T0),
                                 "finished_at": st.none() | st.just(T0)})  # fmt: skip
    return st.fixed_dictionaries({
        "state": st.sampled_from([s.value for s in ItemState]),
        "failed_step": st.none() | st.sampled_from(STEPS),
        "progress": st.fixed_dictionaries({
            "steps": st.dictionaries(st.sampled_from(STEPS), st.just({"content": "x"})),
            "runs": st.dictionaries(st.sampled_from(STEPS), run),
        }),
    })  # fmt: skip


@given(st.lists(item_docs(), min_size=1, max_size=30), st.integers(1, 5))
def test_each_step_counts_each_item_once_whatever_its_items_go_through(history, items):
    """Items changing from any stored form to any other, the moves of each change added to the
    shards: at every step, the counts are where the items stand, and add up to the total."""
    rng = random.Random(1)
    docs = [{"state": "queued"} for _ in range(items)]
    shard: dict = {}
    for after in history:
        n = rng.randrange(items)
        for path, change in step_moves(STEPS, docs[n], after).items():
            _, step, state = path.split(".")
            mine = shard.setdefault("steps", {}).setdefault(step, {})
            mine[state] = mine.get(state, 0) + change
        docs[n] = after
    counts = sum_shards(items, [shard]).of_steps(list(STEPS))
    for step in STEPS:
        expected = Counter(step_state(doc, step) or "queued" for doc in docs)
        assert {k: v for k, v in counts[step].items() if v} == dict(expected)
        assert sum(counts[step].values()) == items


def test_where_an_item_stands_at_a_step():
    running = {"state": "running", "progress": {"steps": {"a": {}},
                                                "runs": {"b": {"started_at": T0}}}}  # fmt: skip
    assert [step_state(running, s) for s in STEPS] == ["succeeded", "running", None]
    failed = {"state": "failed", "failed_step": "b", "progress": {"steps": {"a": {}}}}
    assert [step_state(failed, s) for s in STEPS] == ["succeeded", "failed", "skipped"]
    # A remote job runs while its item waits, queued.
    waiting = {"state": "queued", "progress": {"runs": {"c": {"started_at": T0}}}}
    assert step_state(waiting, "c") == "running"


def test_a_kind_of_one_step_has_the_item_counts():
    counts = sum_shards(5, [{"queued": 1, "running": 1, "succeeded": 1, "failed": 1,
                             "cancelled": 1}])  # fmt: skip
    assert counts.of_steps(["answer"]) == {"answer": {
        "queued": 1, "running": 1, "succeeded": 1, "failed": 1, "skipped": 1}}  # fmt: skip


def test_the_eta_is_never_sooner_than_the_bottleneck_provider_allows():
    counts = sum_shards(100, [{"succeeded": 50, "queued": 50}])
    now = T0 + timedelta(seconds=10)
    # At the pace so far (50 in 10 s) the rest takes 10 s; the image model's 60 a minute holds
    # the 150 calls still owed to it for 150 s, the video vendor's 180 a minute its 50 for 17 s.
    rates = {"image-model": 60, "video-vendor": 180}
    calls = {"image-model": 150, "video-vendor": 50}
    eta = estimate_completion(counts, started_at=T0, now=now, calls=calls,
                              requests_per_minute=rates)  # fmt: skip
    assert eta == now + timedelta(seconds=150)
    # With nothing owed to a slow provider, the pace decides.
    eta = estimate_completion(counts, started_at=T0, now=now, calls={"ai": 50},
                              requests_per_minute={"ai": 6000})  # fmt: skip
    assert eta == now + timedelta(seconds=10)
    steps = {"layout": {"queued": 3, "running": 1}, "video": {"queued": 4, "running": 0}}
    assert calls_left(steps, {"layout": "image-model", "video": "video-vendor"}) == {
        "image-model": 4, "video-vendor": 4}  # fmt: skip
