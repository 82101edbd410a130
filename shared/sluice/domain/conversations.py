"""A conversation's turns: its messages are answered in the order they came, however long the
AI provider keeps them waiting, and waiting never fails one.

Pub/Sub hands a conversation's events over one at a time, in order (their ordering key is the
business number and the user). Waiting for capacity by refusing the delivery would keep that
order, but every refusal counts toward the subscription's `max_delivery_attempts`: about 18
minutes of 429s, and the message would be dead-lettered, unanswered. So a message that finds no
capacity is *parked* instead: acknowledged, and recorded at the head of its conversation's queue.
A later message of the conversation that arrives meanwhile queues behind it (acknowledged too);
the sweeper brings the head back while it waits, and once it is answered, the next one is
brought at once. Nothing waits in Pub/Sub, so nothing is dead-lettered for waiting.

These functions decide; `sluice.adapters.conversations_store` stores the queue and applies them
in a transaction.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any


@dataclass(frozen=True)
class Ref:
    """A waiting message: its item."""

    job_id: str
    item_id: str

    def to_doc(self) -> dict[str, str]:
        return {"job": self.job_id, "item": self.item_id}

    @classmethod
    def from_doc(cls, doc: dict[str, Any]) -> Ref:
        return cls(str(doc["job"]), str(doc["item"]))


class Turn(StrEnum):
    GO = "go"  # nothing waits ahead of it: work on it now
    QUEUED = "queued"  # an earlier message waits: it now waits behind, in the order it came
    WAITING = "waiting"  # it waits already, behind an earlier one: nothing to do yet


def turn(waiting: Sequence[Ref], me: Ref) -> tuple[Turn, list[Ref]]:
    """Whether `me` may be worked on now, and the queue afterwards."""
    if not waiting or waiting[0] == me:
        return Turn.GO, list(waiting)
    if me in waiting:
        return Turn.WAITING, list(waiting)
    return Turn.QUEUED, [*waiting, me]


def park(waiting: Sequence[Ref], me: Ref) -> list[Ref]:
    """`me` had its turn but found no capacity: it waits at the head, ahead of whatever queued
    behind it meanwhile."""
    return list(waiting) if me in waiting else [me, *waiting]


def done(waiting: Sequence[Ref], me: Ref) -> tuple[list[Ref], Ref | None]:
    """`me` is finished (answered, failed or cancelled): the queue without it, and the message
    to bring now if `me` was the one holding the others back."""
    rest = [r for r in waiting if r != me]
    was_head = bool(waiting) and waiting[0] == me
    return rest, (rest[0] if was_head and rest else None)
