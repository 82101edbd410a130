"""A conversation's turns: answered in the order they came, however long they wait."""

from hypothesis import given
from hypothesis import strategies as st

from sluice.domain.conversations import Ref, Turn, done, park, turn

A, B, C = Ref("day", "a"), Ref("day", "b"), Ref("day", "c")


def test_a_message_with_nothing_waiting_ahead_goes_at_once():
    assert turn([], A) == (Turn.GO, [])
    assert turn([A, B], A) == (Turn.GO, [A, B])  # the head, brought back


def test_a_message_arriving_behind_a_waiting_one_queues_in_arrival_order():
    assert turn([A], B) == (Turn.QUEUED, [A, B])
    assert turn([A, B], C) == (Turn.QUEUED, [A, B, C])
    assert turn([A, B], B) == (Turn.WAITING, [A, B])  # delivered again: still its place


def test_a_message_without_capacity_waits_at_the_head():
    assert park([], A) == [A]
    assert park([A, B], A) == [A, B]
    # Went while nothing waited; one queued behind it meanwhile: it stays ahead.
    assert park([B], A) == [A, B]


def test_a_finished_head_brings_the_next_and_a_finished_other_brings_nothing():
    assert done([A, B, C], A) == ([B, C], B)
    assert done([A], A) == ([], None)
    assert done([A, B], B) == ([A], None)
    assert done([], A) == ([], None)


@given(st.lists(st.sampled_from("abcdef"), max_size=30))
def test_whatever_the_deliveries_messages_are_answered_in_arrival_order(events):
    """Each event: a delivery of a message (in arrival order of first delivery, as Pub/Sub's
    ordering key gives), which either finds capacity and is answered, or does not and parks."""
    waiting: list[Ref] = []
    arrived: list[Ref] = []
    answered: list[Ref] = []
    for n, name in enumerate(events):
        me = Ref("day", name)
        if me in answered:
            continue
        if me not in arrived:
            arrived.append(me)
        decision, waiting = turn(waiting, me)
        if decision is not Turn.GO:
            continue
        if n % 3 == 0:  # no capacity this time
            waiting = park(waiting, me)
            continue
        answered.append(me)
        waiting, _ = done(waiting, me)
    assert answered == arrived[: len(answered)]
