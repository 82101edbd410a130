"""A kind's steps: which run next, in what order, and when the item is done."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from sluice.domain.pipelines import Plan, PlannedStep, in_order
from sluice.domain.templates import ChatMessage, ChatTemplate

T = ChatTemplate([ChatMessage("user", "{{ input }}")])


def plan(**needs: tuple[str, ...]) -> Plan:
    return Plan(tuple(PlannedStep(n, after, T) for n, after in needs.items()))


def test_independent_steps_run_together_and_a_step_waits_for_all_it_needs():
    reply = plan(intent=(), draft=(), compose=("intent", "draft"), send=("compose",))
    assert [s.name for s in reply.ready({})] == ["intent", "draft"]
    assert [s.name for s in reply.ready({"intent": {}})] == ["draft"]
    assert [s.name for s in reply.ready({"intent": {}, "draft": {}})] == ["compose"]
    assert not reply.finished({"intent": {}, "draft": {}, "compose": {}})
    assert reply.finished({"intent": {}, "draft": {}, "compose": {}, "send": {}})
    assert reply.final == "send"


def test_the_order_puts_each_step_after_what_it_needs_and_leaves_out_a_cycle():
    assert in_order({"c": ["a", "b"], "a": [], "b": ["a"]}) == ["a", "b", "c"]
    assert in_order({"a": ["b"], "b": ["a"], "c": []}) == ["c"]


@given(st.data())
def test_running_waves_until_done_runs_every_step_once_after_all_it_needs(data):
    names = [f"s{i}" for i in range(data.draw(st.integers(1, 8)))]
    needs = {n: tuple(data.draw(st.sets(st.sampled_from(names[:i])))) if i else ()
             for i, n in enumerate(names)}  # fmt: skip
    p = plan(**needs)
    done: dict[str, int] = {}
    wave_of: dict[str, int] = {}
    waves = 0
    while not p.finished(done):
        wave = p.ready(done)
        assert wave and not {s.name for s in wave} & set(done)
        waves += 1
        for step in wave:
            assert all(wave_of[a] < waves for a in step.after)
            done[step.name] = wave_of[step.name] = waves
    assert sorted(done) == sorted(names)
