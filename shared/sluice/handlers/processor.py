"""Processing one item: claim it, do its work, record the outcome, close the job.

The work differs (an AI call for a CRM item, an AI reply sent over WhatsApp for a message); the
life around it is the same, and is here. It returns `Ack` or raises `Redeliver` or `Defer` (see
sluice.outcomes). A repeated delivery of a finished item is acknowledged and does nothing; one of
an item another worker is on comes again later; one that found no capacity, or a provider saying
"too many", comes again without spending an attempt.
"""

from __future__ import annotations

import contextlib
import logging
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from functools import partial
from typing import Any

from sluice.adapters.ai_provider import AIProvider
from sluice.adapters.items_store import ItemStore
from sluice.adapters.jobs_store import JobStore
from sluice.adapters.limiter import Limiter, Permit
from sluice.adapters.outside import ProviderError
from sluice.adapters.publisher import Publisher
from sluice.clock import now
from sluice.domain.items import (
    AlreadyFinished,
    Claimed,
    ItemRecord,
    ItemState,
    LeaseHeld,
    Transition,
    after_error,
    requeue_uncounted,
    succeed,
    superseded,
)
from sluice.domain.pipelines import Plan, PlannedStep
from sluice.domain.sheets import export_kind
from sluice.domain.templates import TemplateRefused
from sluice.messages import BATCH_EVENTS, BatchCompleted, WorkItem
from sluice.outcomes import Ack, Defer, Redeliver

log = logging.getLogger(__name__)


class LeaseLost(Exception):
    """The claim passed to another delivery (this one was presumed dead): its outcome counts."""


class Progress:
    """How far earlier claims of an item got (`saved`), and `save` to record more under this
    claim: work with an effect that must not be repeated (sending a message) records it before
    and after, and a takeover after a crash resumes from the record instead of repeating it."""

    def __init__(self, saved: dict[str, Any], save: Callable[[dict[str, Any]], bool]) -> None:
        self.saved = dict(saved)
        self._save = save

    def save(self, **fields: Any) -> None:
        """Raises LeaseLost when the claim is not this worker's any more: stop, do nothing else."""
        if not self._save(fields):
            raise LeaseLost("another delivery took the item over")
        self.saved.update(fields)


# The work of one item: its input, its job (tenant, kind, params) and its progress in, its
# result out; ProviderError if not, Defer if it found no capacity for a call it makes.
Work = Callable[[Any, dict[str, Any], Progress], dict[str, Any]]


@dataclass(frozen=True)
class Capacity:
    """The limits a piece of work runs under, and how long it may wait for them."""

    limiter: Limiter
    interactive: bool
    wait_seconds: float
    # Whose share of the slots the work counts against (default: its job's tenant), and the
    # most that holder may have at once (default: the provider's tenant cap).
    holder: str = ""
    holder_cap: int | None = None

    def permit(self, tenant: str) -> contextlib.AbstractContextManager[Permit]:
        """Held for the block (see Limiter.permit); Defer if none came free in time."""
        return self.limiter.permit(
            tenant=self.holder or tenant, interactive=self.interactive,
            wait=self.wait_seconds, cap=self.holder_cap,
        )  # fmt: skip


@dataclass(frozen=True)
class ClaimRules:
    lease_seconds: int  # how long a claim holds its item before another delivery may take it
    max_attempts: int  # failed attempts before the item fails for good


@dataclass(frozen=True)
class Claiming:
    """What claiming an item and recording its outcome need: its job, its item, the rules."""

    jobs: JobStore
    items: ItemStore
    rules: ClaimRules


def process_item(
    claiming: Claiming,
    work: Work,
    job_id: str,
    item_id: str,
    *,
    capacity: Capacity | None = None,
    dispatch: int | None = None,
) -> Ack:
    """`dispatch`: which send of the item the message being handled is, for messages the
    sweeper sends again (see sluice.domain.items.superseded); None for those it never does."""
    # A finished item needs no capacity: answer a repeated delivery before waiting for any.
    # The claim below is conditional on the item staying as read here.
    jobs, items, rules = claiming.jobs, claiming.items, claiming.rules
    seen = items.read_item(job_id, item_id)
    if seen is not None and ItemState(seen.doc["state"]).finished:
        # Redelivered because the delivery that finished it died before its answer: perhaps
        # before it could see the job done too, which no other delivery would see then.
        completed = jobs.complete_if_done(job_id)
        return Ack(item_id, seen.doc["state"], "duplicate delivery", completed, job_id)
    if (
        dispatch is not None
        and seen is not None
        and superseded(ItemRecord.from_doc(seen.doc), dispatch)
    ):
        return Ack(item_id, "superseded", "a newer message carries the item")
    job = jobs.job_meta(job_id)
    token = uuid.uuid4().hex
    # The permit covers the claim and the provider call, and is let go before the outcome is
    # recorded. The claim is conditional on the item staying as read above.
    with _permit(capacity, str(job.get("tenant"))):
        claimed = items.claim_item(
            job_id, item_id, token=token, lease_seconds=rules.lease_seconds,
            max_attempts=rules.max_attempts, seen=seen,
        )  # fmt: skip
        if claimed is None:
            # Nothing to do, ever: a message for an item that does not exist is acknowledged.
            log.error("work item %s/%s does not exist", job_id, item_id)
            return Ack(item_id, "missing")
        decision = claimed.decision
        if isinstance(decision, AlreadyFinished):
            return Ack(item_id, decision.state.value, "duplicate delivery")
        if isinstance(decision, LeaseHeld):
            raise Redeliver(f"item {item_id} is leased until {decision.until}")
        if isinstance(decision, Transition):
            completed = jobs.complete_if_done(job_id)
            return Ack(item_id, decision.after.value, "lease expired too often", completed, job_id)
        assert isinstance(decision, Claimed)
        attempt = _Attempt(items, job_id, item_id, token, claimed.after)
        decide, deferred = attempt.run(work, claimed.input, job, claimed.progress, rules, capacity)
    if decide is None:
        return Ack(item_id, "superseded", "another delivery took the item over")
    change = items.finish_item(job_id, item_id, token=token, decide=decide, seen=attempt.latest,
                               kind=export_kind(job))  # fmt: skip
    if change is None:
        return Ack(item_id, "superseded", "another delivery took the item over")
    if change.after is ItemState.QUEUED:
        reason = f"item {item_id}: {change.fields['error']}"
        raise Defer(reason) if deferred else Redeliver(reason)
    # Only a commit that may have finished the job reads every counter shard to see.
    completed = jobs.complete_if_done(job_id) if change.may_finish_job else None
    return Ack(item_id, change.after.value, completed=completed, job=job_id)


def _superseded(doc: dict[str, Any], dispatch: int) -> bool:
    return superseded(ItemRecord.from_doc(doc), dispatch)


@contextlib.contextmanager
def _permit(capacity: Capacity | None, tenant: str) -> Iterator[None]:
    if capacity is None:
        yield
        return
    with capacity.permit(tenant):
        yield


class _Attempt:
    """One claimed attempt at the work: the item as this claim last wrote it (`latest`), which
    every later write of the claim is conditional on."""

    def __init__(self, items: ItemStore, job_id: str, item_id: str, token: str, latest: Any):
        self._items, self._job, self._item, self._token = items, job_id, item_id, token
        self.latest = latest

    def _save(self, fields: dict[str, Any]) -> bool:
        saved, self.latest = self._items.save_progress(
            self._job, self._item, token=self._token, fields=fields, seen=self.latest
        )
        return saved

    def run(
        self, work: Work, item_input: Any, job: dict[str, Any], progress: dict[str, Any],
        rules: ClaimRules, capacity: Capacity | None,
    ) -> tuple[Callable[[ItemRecord], Transition] | None, bool]:  # fmt: skip
        """The decision to record (None if the claim was lost) and whether the item waits for
        capacity rather than failed."""
        try:
            result = work(item_input, job, Progress(progress, self._save))
        except LeaseLost:
            return None, False
        except TemplateRefused as refused:
            # The kind's templates cannot make this item's request: no attempt would.
            return partial(
                after_error, reason=str(refused), permanent=True,
                max_attempts=rules.max_attempts, now=now(),
            ), False  # fmt: skip
        except Defer as deferred:
            # A call of the work found no capacity (a WhatsApp send): it waits, losing nothing.
            return partial(requeue_uncounted, reason=deferred.reason, now=now()), True
        except ProviderError as error:
            if capacity is not None:
                # Caught inside the permit, so the permit does not see it: tell its limiter.
                error = capacity.limiter.learn(error)
            if error.rate_limited:
                return partial(requeue_uncounted, reason=str(error), now=now()), True
            return partial(
                after_error, reason=str(error), permanent=error.permanent,
                max_attempts=rules.max_attempts, now=now(),
            ), False  # fmt: skip
        return partial(succeed, result=result, now=now()), False


# -- CRM items -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class WorkItemDeps:
    claiming: Claiming
    ai: AIProvider
    # Each kind's steps, their templates compiled once per process (topology.yaml's `kinds`).
    kinds: dict[str, Plan]
    default_kind: str
    # Bulk work: behind interactive replies for the AI provider's capacity, shared by tenants.
    capacity: Capacity
    publisher: Publisher


def handle_work_item(deps: WorkItemDeps, work: WorkItem) -> Ack:
    """A CRM item: the steps its kind declares. Raises Defer when it found no capacity, or
    ran one wave of a pipeline's steps and has more to run (the push entry point publishes the
    same message again: neither counts as a delivery attempt)."""
    job = deps.claiming.jobs.job_meta(work.job_id)
    # A job of a kind not declared was submitted before kinds were (any name was taken then,
    # for today's one call, the default kind's), or its kind was removed since.
    plan = deps.kinds.get(str(job.get("kind"))) or deps.kinds[deps.default_kind]
    if len(plan.steps) == 1:
        # One call: its permit is taken before the claim, so waiting for capacity costs the
        # item no write (process_item).
        step = plan.steps[0]

        def one_call(item_input: Any, job: dict[str, Any], _progress: Progress) -> dict[str, Any]:
            params = job.get("params") or {}
            return deps.ai.chat(step.template.render(item_input, params), params)

        ack = process_item(
            deps.claiming, one_call, work.job_id, work.item_id,
            capacity=deps.capacity, dispatch=work.dispatch,
        )  # fmt: skip
    else:
        ack = process_item(
            deps.claiming, partial(run_wave, deps, plan), work.job_id, work.item_id,
            dispatch=work.dispatch,
        )  # fmt: skip
    announce_completion(deps.publisher, ack)
    return ack


def run_wave(
    deps: WorkItemDeps, plan: Plan, item_input: Any, job: dict[str, Any], progress: Progress
) -> dict[str, Any]:
    """The steps of `plan` that can run now, at the same time, each under a permit of its own;
    each output recorded once its wave ends, whatever else failed in it. The item's result once
    every step has succeeded; otherwise Defer, so that the next wave runs in a delivery of its
    own (no delivery outlives its lease or its ack deadline, however long the pipeline)."""
    params, tenant = job.get("params") or {}, str(job.get("tenant"))
    done: dict[str, Any] = dict(progress.saved.get("steps") or {})
    wave = plan.ready(done)

    def call(step: PlannedStep) -> dict[str, Any]:
        try:
            messages = step.template.render(item_input, params, done)
            with deps.capacity.permit(tenant):
                return deps.ai.chat(messages, params)
        except ProviderError as error:
            # The item's error says which step failed, and why.
            raise replace(error, reason=f"step {step.name}: {error.reason}") from None
        except TemplateRefused as refused:
            raise TemplateRefused(f"step {step.name}: {refused}") from None

    if len(wave) == 1:
        outcomes = [_outcome(call, wave[0])]  # no thread for a wave of one
    else:
        with ThreadPoolExecutor(len(wave)) as pool:
            outcomes = list(pool.map(partial(_outcome, call), wave))
    succeeded = {name: out for name, out in outcomes if not isinstance(out, BaseException)}
    if succeeded:
        done.update(succeeded)
        progress.save(steps=done)
    errors = [out for _, out in outcomes if isinstance(out, BaseException)]
    # A provider's refusal is the item's outcome; a wait for capacity only if nothing failed.
    failed = [e for e in errors if not isinstance(e, Defer)]
    if errors:
        raise (failed or errors)[0]
    if plan.finished(done):
        return dict(done[plan.final])
    raise Defer(f"next steps: {', '.join(s.name for s in plan.ready(done))}")


def _outcome(
    call: Callable[[PlannedStep], dict[str, Any]], step: PlannedStep
) -> tuple[str, dict[str, Any] | Exception]:
    """A step's output, or what it raised, so that one step's failure keeps the others'."""
    try:
        return step.name, call(step)
    except (ProviderError, TemplateRefused, Defer) as error:  # run_wave raises it once saved
        return step.name, error


def announce_completion(publisher: Publisher, ack: Ack) -> None:
    if ack.completed is not None:
        # Raising here would not bring the event back (the item is finished); a lost publish
        # leaves the job's callback `pending`, which the sweeper republishes.
        completed = BatchCompleted(job_id=ack.job, completion=ack.completed)
        publisher.publish(BATCH_EVENTS, [completed.model_dump()])
