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
import threading
import uuid
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from datetime import timedelta
from functools import partial
from typing import Any

from sluice.adapters.items_store import ItemStore
from sluice.adapters.jobs_store import JobStore
from sluice.adapters.limiter import Limiter, Permit
from sluice.adapters.outside import ProviderError
from sluice.adapters.provider_api import ProviderAPI
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
from sluice.messages import BATCH_EVENTS, JOB_POLLS, BatchCompleted, WorkItem
from sluice.outcomes import Ack, Defer, NextWave, NotDone, Redeliver, Waiting

log = logging.getLogger(__name__)


class LeaseLost(Exception):
    """The claim passed to another delivery (this one was presumed dead): its outcome counts."""


class Progress:
    """How far earlier claims of an item got (`saved`), and `save` to record more under this
    claim: work with an effect that must not be repeated (sending a message) records it before
    and after, and a takeover after a crash resumes from the record instead of repeating it.
    Safe to share between the threads of a pipeline's wave: one write at a time, each
    conditional on the one before."""

    def __init__(self, saved: dict[str, Any], save: Callable[[dict[str, Any]], bool]) -> None:
        self.saved = dict(saved)
        self._save = save
        self._lock = threading.RLock()

    def save(self, **fields: Any) -> None:
        """Raises LeaseLost when the claim is not this worker's any more: stop, do nothing else."""
        with self._lock:
            if not self._save(fields):
                raise LeaseLost("another delivery took the item over")
            self.saved.update(fields)

    def merge(self, **fields: dict[str, Any]) -> None:
        """Save each field's entries into what it holds (a step's output into `steps`), in one
        write; an entry of None is removed."""
        with self._lock:
            merged = {}
            for name, entries in fields.items():
                held = {**(self.saved.get(name) or {}), **entries}
                merged[name] = {k: v for k, v in held.items() if v is not None}
            self.save(**merged)

    def of(self, name: str) -> dict[str, Any]:
        """What field `name` holds (a copy), by entry."""
        with self._lock:
            return dict(self.saved.get(name) or {})


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
        decide, later = attempt.run(work, claimed.input, job, claimed.progress, rules, capacity)
    if decide is None:
        return Ack(item_id, "superseded", "another delivery took the item over")
    change = items.finish_item(job_id, item_id, token=token, decide=decide, seen=attempt.latest,
                               kind=export_kind(job))  # fmt: skip
    if change is None:
        return Ack(item_id, "superseded", "another delivery took the item over")
    if change.after is ItemState.QUEUED:
        reason = f"item {item_id}: {change.fields['error']}"
        raise (later or Redeliver)(reason)
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
    ) -> tuple[Callable[[ItemRecord], Transition] | None, type[NotDone] | None]:  # fmt: skip
        """The decision to record (None if the claim was lost) and, when the item waits for
        capacity or for a remote job rather than failed, which (Defer, Waiting)."""
        try:
            result = work(item_input, job, Progress(progress, self._save))
        except LeaseLost:
            return None, None
        except TemplateRefused as refused:
            # The kind's templates cannot make this item's request: no attempt would.
            return partial(
                after_error, reason=str(refused), permanent=True,
                max_attempts=rules.max_attempts, now=now(), step=refused.step,
            ), None  # fmt: skip
        except (Defer, Waiting) as waits:
            # A call of the work found no capacity (a WhatsApp send), or a remote job runs: it
            # waits, losing nothing.
            return partial(requeue_uncounted, reason=waits.reason, now=now()), type(waits)
        except ProviderError as error:
            if capacity is not None:
                # Caught inside the permit, so the permit does not see it: tell its limiter.
                error = capacity.limiter.learn(error)
            if error.rate_limited:
                return partial(requeue_uncounted, reason=str(error), now=now()), Defer
            return partial(
                after_error, reason=str(error), permanent=error.permanent,
                max_attempts=rules.max_attempts, now=now(), step=error.step,
            ), None  # fmt: skip
        return partial(succeed, result=result, now=now()), None


# -- CRM items -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StepProvider:
    """A provider a kind's steps call: its adapter, and the share of its limits the work takes
    (bulk or interactive; for a provider of remote jobs, of its running jobs: a slot from a
    job's start to its end). WhatsApp's sends have no endpoint: `reply` sends a text back to
    the user whose message the item is, and answers the step's output."""

    api: ProviderAPI | None
    capacity: Capacity
    reply: Callable[[str], dict[str, Any]] | None = None


@dataclass(frozen=True)
class WorkItemDeps:
    claiming: Claiming
    # Each kind's steps, their templates compiled once per process (topology.yaml's `kinds`).
    kinds: dict[str, Plan]
    default_kind: str
    # By name, every provider a step calls.
    providers: dict[str, StepProvider]
    publisher: Publisher


def handle_work_item(deps: WorkItemDeps, work: WorkItem, *, poll: int | None = None) -> Ack:
    """A CRM item: the steps its kind declares. Raises Defer when it found no capacity, or
    ran one wave of a pipeline's steps and has more to run (the push entry point publishes the
    same message again: neither counts as a delivery attempt).

    An item waiting for a remote job is looked at again by a message on the job-polls topic:
    `poll` is that message's delivery attempt (0 when not known). A work item that starts a job
    publishes one and is done; a poll comes again on its subscription's backoff (Redeliver)
    until the job ends, and is published afresh before Pub/Sub would count it as failing."""
    job = deps.claiming.jobs.job_meta(work.job_id)
    # A job of a kind not declared was submitted before kinds were (any name was taken then,
    # for today's one call, the default kind's), or its kind was removed since.
    plan = deps.kinds.get(str(job.get("kind"))) or deps.kinds[deps.default_kind]
    try:
        if len(plan.steps) == 1 and plan.steps[0].call != "remote_job":
            ack = _one_call(deps, plan.steps[0], work)
        else:
            ack = process_item(
                deps.claiming, partial(run_wave, deps.providers, plan), work.job_id,
                work.item_id, dispatch=work.dispatch,
            )  # fmt: skip
    except Waiting as waiting:
        if poll is None:
            deps.publisher.publish(JOB_POLLS, [work.model_dump()])
            return Ack(work.item_id, "waiting", waiting.reason)
        if poll >= POLL_RESTART_AFTER:
            raise Defer(waiting.reason) from None
        raise Redeliver(waiting.reason) from None
    announce_completion(deps.publisher, ack)
    return ack


# A poll message delivered this often is published afresh (Defer), well before the job-polls
# subscription's max_delivery_attempts would dead-letter it: waiting is not failing.
POLL_RESTART_AFTER = 50


def _one_call(deps: WorkItemDeps, step: PlannedStep, work: WorkItem) -> Ack:
    """One call: its permit is taken before the claim, so waiting for capacity costs the item
    no write (process_item)."""
    provider = deps.providers[step.provider]

    def one_call(item_input: Any, job: dict[str, Any], progress: Progress) -> dict[str, Any]:
        return _call(provider, step, item_input, job, progress, {})

    return process_item(
        deps.claiming, one_call, work.job_id, work.item_id,
        capacity=provider.capacity, dispatch=work.dispatch,
    )  # fmt: skip


def _call(
    provider: StepProvider, step: PlannedStep, item_input: Any, job: dict[str, Any],
    progress: Progress, done: dict[str, Any],
) -> dict[str, Any]:  # fmt: skip
    """A chat, http or WhatsApp reply step's call, once its permit is held; a step that must not
    be repeated is recorded as started first, and fails its item if an earlier claim started it
    already."""
    params = job.get("params") or {}
    request = step.template.render(item_input, params, done)
    if not step.repeatable:
        if step.name in progress.of("started"):
            # An earlier claim started it and died before recording how it went.
            raise ProviderError(IN_DOUBT, permanent=True)
        progress.merge(started={step.name: now()})
    try:
        if step.call == "whatsapp_reply":
            assert provider.reply is not None, "a whatsapp_reply step outside a WhatsApp message"
            return provider.reply(str(request))
        assert provider.api is not None
        if step.call == "chat":
            return provider.api.chat(request, params, model=step.model)
        return provider.api.request(step.request.method, step.request.path, request)
    except ProviderError as error:
        if error.maybe_delivered and not step.repeatable:
            # No answer came back: it may have happened, and is never made twice.
            raise ProviderError(f"{IN_DOUBT} ({error.reason})", permanent=True) from None
        raise


# A step that must not be repeated, found started by a claim that was lost or with no answer.
IN_DOUBT = (
    "it may have been made already (the worker was lost, or no answer came back while making "
    "it); it is not repeatable, so it was not made again: retry-failed makes it again"
)


def run_wave(
    providers: Mapping[str, StepProvider],
    plan: Plan,
    item_input: Any,
    job: dict[str, Any],
    progress: Progress,
) -> dict[str, Any]:
    """The steps of `plan` that can run now, at the same time, each under its own provider's
    permit; each output recorded as soon as it succeeds, whatever else fails. The item's result
    once every step has succeeded; otherwise Defer, so that the next wave runs in a delivery of
    its own (no delivery outlives its lease or its ack deadline, however long the pipeline), or
    Waiting while a remote job runs. NextWave (a Defer) when a wave ended with more to run."""
    tenant = str(job.get("tenant"))
    done = progress.of("steps")
    wave = plan.ready(done)

    def call(step: PlannedStep) -> dict[str, Any]:
        provider = providers[step.provider]
        try:
            if step.call == "remote_job":
                output = remote_job(provider, step, item_input, job, progress, done)
                # Its job's record goes with its output, in one write.
                progress.merge(steps={step.name: output}, jobs={step.name: None},
                               runs={step.name: ended(progress, step.name)})  # fmt: skip
            else:
                with provider.capacity.permit(tenant):
                    progress.merge(runs={step.name: started(progress, step.name)})
                    output = _call(provider, step, item_input, job, progress, done)
                progress.merge(steps={step.name: output},
                               runs={step.name: ended(progress, step.name)})  # fmt: skip
            return output
        except ProviderError as error:
            if running(progress, step.name):
                progress.merge(runs={step.name: ended(progress, step.name, error.reason)})
            # The item's error says which step failed, and why.
            reason = f"step {step.name}: {error.reason}"
            raise replace(error, reason=reason, step=step.name) from None
        except TemplateRefused as refused:
            raise TemplateRefused(f"step {step.name}: {refused}", step.name) from None

    if not wave:
        # Every step succeeded already: a delivery after the last one's record.
        outcomes = []
    elif len(wave) == 1:
        outcomes = [_outcome(call, wave[0])]  # no thread for a wave of one
    else:
        with ThreadPoolExecutor(len(wave)) as pool:
            outcomes = list(pool.map(partial(_outcome, call), wave))
    done = progress.of("steps")
    errors = [out for _, out in outcomes if isinstance(out, BaseException)]
    # A provider's refusal is the item's outcome; a job still running before a wait for
    # capacity, which the next look at the item tries again anyway.
    failed = [e for e in errors if not isinstance(e, Defer | Waiting)]
    waiting = [e for e in errors if isinstance(e, Waiting)]
    if errors:
        raise (failed or waiting or errors)[0]
    if plan.finished(done):
        return dict(done[plan.final])
    raise NextWave(f"next steps: {', '.join(s.name for s in plan.ready(done))}")


def started(progress: Progress, step: str) -> dict[str, Any]:
    """A step's run record as its call starts: one more attempt at it (a wait for capacity is
    none), started now. The items listing shows it; the counts per step read it (running)."""
    run = progress.of("runs").get(step) or {}
    attempts = int(run.get("attempts", 0)) + 1
    return {"attempts": attempts, "started_at": now(), "finished_at": None, "error": None}


def ended(progress: Progress, step: str, error: str | None = None) -> dict[str, Any]:
    """A step's run record as its call ends, with its error if it failed."""
    return {**(progress.of("runs").get(step) or {}), "finished_at": now(), "error": error}


def running(progress: Progress, step: str) -> bool:
    run = progress.of("runs").get(step) or {}
    return bool(run.get("started_at")) and not run.get("finished_at")


def _outcome(
    call: Callable[[PlannedStep], dict[str, Any]], step: PlannedStep
) -> tuple[str, dict[str, Any] | Exception]:
    """A step's output, or what it raised, so that one step's failure keeps the others'."""
    try:
        return step.name, call(step)
    except (ProviderError, TemplateRefused, Defer, Waiting) as error:  # run_wave raises it
        return step.name, error


def remote_job(
    provider: StepProvider, step: PlannedStep, item_input: Any, job: dict[str, Any],
    progress: Progress, done: dict[str, Any],
) -> dict[str, Any]:  # fmt: skip
    """Start the step's job at the provider under a slot of its running jobs, or poll the job
    started already; its final answer once it succeeded. Raises Waiting while it runs, and
    ProviderError when it failed (its slot freed: the next attempt starts a new one)."""
    spec = step.job
    limiter = provider.capacity.limiter
    record = progress.of("jobs").get(step.name) or {}

    def keep(value: dict[str, Any] | None) -> None:
        progress.merge(jobs={step.name: value})

    def free() -> None:
        limiter.release(Permit(*record["slot"]))
        keep(None)

    if "task" not in record:
        if record.get("starting") and not step.repeatable:
            # Started by a claim that died before recording the job's id.
            raise ProviderError(IN_DOUBT, permanent=True)
        if "slot" not in record:
            # A slot of the provider's running jobs, held until the job's final status (or,
            # if nobody sees that, until its timeout).
            # A slot frees only when a poll sees its job end, and polls need the instances a
            # waiting delivery holds: waiting longer than a poll period only delays them.
            wait = min(provider.capacity.wait_seconds, spec.poll_seconds)
            permit = limiter.acquire(
                tenant=str(job.get("tenant")), interactive=provider.capacity.interactive,
                wait=wait, hold_seconds=spec.timeout_seconds,
            )  # fmt: skip
            if permit is None:
                raise Defer(f"no {limiter.name} job slot came free within {wait:g}s")
            record = {"slot": [permit.shard, permit.token]}
        body = step.template.render(item_input, job.get("params") or {}, done)
        record = {**record, "starting": now()}
        progress.merge(jobs={step.name: record}, runs={step.name: started(progress, step.name)})
        assert provider.api is not None
        try:
            answer = provider.api.request(spec.start.method, spec.start.path, body)
        except ProviderError as error:
            error = limiter.learn(error)
            if not error.maybe_delivered:
                free()  # it never started: its slot is free again
            raise
        task = answer.get(spec.id_field)
        if not isinstance(task, str | int) or isinstance(task, bool) or str(task) == "":
            free()
            raise ProviderError(f"its start answered no {spec.id_field!r}", permanent=False)
        at = now()
        record = {**record, "task": str(task), "started_at": at,
                  "poll_at": at + timedelta(seconds=spec.poll_seconds)}  # fmt: skip
        keep(record)
        raise Waiting(f"step {step.name}: job {task} started")
    task, at = record["task"], now()
    if at < record["poll_at"]:
        raise Waiting(f"step {step.name}: job {task} running, next poll at {record['poll_at']}")
    if at > record["started_at"] + timedelta(seconds=spec.timeout_seconds):
        free()
        raise ProviderError(f"job {task} did not end within {spec.timeout_seconds:g}s",
                            permanent=True)  # fmt: skip
    assert provider.api is not None
    try:
        status = provider.api.poll(spec.status_path.replace("{id}", task))
    except ProviderError as error:
        if error.permanent:  # the provider does not know the job (404): it will not end
            free()
            raise
        # A poll that found the provider busy or down says nothing of the job: poll later.
        keep({**record, "poll_at": at + timedelta(seconds=spec.poll_seconds)})
        raise Waiting(f"step {step.name}: job {task} not polled ({error.reason})") from None
    state = str(status.get(spec.status_field))
    if state in spec.succeeded:
        limiter.release(Permit(*record["slot"]))
        return status  # saved by the caller with the job's record removed, in one write
    if state in spec.failed:
        free()
        why = status.get("failure") or status.get("error") or ""
        raise ProviderError(f"job {task} ended {state}" + (f": {why}" if why else ""),
                            permanent=False)  # fmt: skip
    keep({**record, "poll_at": at + timedelta(seconds=spec.poll_seconds)})
    raise Waiting(f"step {step.name}: job {task} {state.lower()}")


def announce_completion(publisher: Publisher, ack: Ack) -> None:
    if ack.completed is not None:
        # Raising here would not bring the event back (the item is finished); a lost publish
        # leaves the job's callback `pending`, which the sweeper republishes.
        completed = BatchCompleted(job_id=ack.job, completion=ack.completed)
        publisher.publish(BATCH_EVENTS, [completed.model_dump()])
