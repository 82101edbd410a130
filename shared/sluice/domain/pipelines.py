"""A kind's steps as a plan: which run next, given the ones that have succeeded.

A step starts once every step it comes `after` has succeeded; steps that do not need each other
run at the same time. The item's result is its last step's output, once every step has
succeeded. Each output is recorded as its step succeeds, so a step that succeeded is never run
again: a redelivery, a takeover or the next wave starts from what is recorded.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sluice.domain.templates import ChatTemplate, RequestTemplate


@dataclass(frozen=True)
class PlannedStep:
    name: str
    after: tuple[str, ...]
    # A chat step's messages, or the body an http step sends or a remote job starts with.
    template: ChatTemplate | RequestTemplate
    provider: str = "ai"
    call: str = "chat"  # chat | http | remote_job
    model: str | None = None
    repeatable: bool = True
    # The topology's declaration of an http step's request or a remote job (sluice.topology's
    # StepRequest and RemoteJob): its method, path, polling and final statuses.
    request: Any = None
    job: Any = None


def in_order(needs: Mapping[str, Sequence[str]]) -> list[str]:
    """The steps in an order where each comes after the ones it needs (as declared where that
    leaves a choice); those in a cycle, or after an unknown step, are left out."""
    order: list[str] = []
    placed: set[str] = set()
    while True:
        ready = [n for n, after in needs.items() if n not in placed and set(after) <= placed]
        if not ready:
            return order
        order += ready
        placed |= set(ready)


@dataclass(frozen=True)
class Plan:
    steps: tuple[PlannedStep, ...]  # each after the ones it needs; the last is the result

    @property
    def final(self) -> str:
        return self.steps[-1].name

    def ready(self, done: Mapping[str, Any]) -> list[PlannedStep]:
        """The steps to run now: not yet succeeded, and every step they need has."""
        return [s for s in self.steps if s.name not in done and all(a in done for a in s.after)]

    def finished(self, done: Mapping[str, Any]) -> bool:
        return all(s.name in done for s in self.steps)
