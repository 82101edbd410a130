"""The sweeper, fired by the scheduler: it moves on whatever no live message will.

- an item `running` under a lease that expired (its worker died) gets a new message, which takes
  it over (Pub/Sub would redeliver the old one too; the sweeper does not rely on it);
- the queued items of a batch that made no progress for `stall`, and that no delivery touched for
  as long, get new messages: a requeue whose publish failed (retry-failed answered 503) leaves
  items no message will ever reach. `stall` must exceed the subscription's longest retry backoff,
  or items waiting out their backoff would get duplicate messages. Each new message supersedes
  the item's older ones (sluice.domain.items.superseded), so an outage of any length never
  multiplies an item's messages;
- an intake nobody is finishing (answered 503 and never retried): one whose items are all written
  is published, one left half-written for `abandon_after` is marked abandoned (see
  sluice.domain.intake);
- a completion whose callback is still pending and that no delivery touched for `callback_quiet`
  (longer than a live delivery chain stays silent: its message was lost) gets its batch-events
  message again, once per `callback_quiet`; a chain still retrying is left to its backoff;
- a WhatsApp conversation whose messages wait for capacity (parked: see
  sluice.domain.conversations) gets its oldest one's event again, once per sweep;
- a Sheets export whose backfill or writer died (its lease expired with work left: a backfill
  still `running`, or results queued and unwritten with no live flush lease) is touched, which
  triggers the backfill function to resume it.

Every message it sends may duplicate a live one; that is harmless, since a delivery claims its item
in a transaction and a finished item or a settled callback acknowledges a repeat.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

from sluice.adapters.callbacks_store import CallbackStore
from sluice.adapters.exports_store import ExportStore
from sluice.adapters.intake_store import IntakeStore
from sluice.adapters.items_store import ItemStore
from sluice.adapters.jobs_store import JobStore
from sluice.adapters.publisher import Publisher
from sluice.domain import intake
from sluice.domain.items import ItemState, dispatch_at, lease_live, stalled
from sluice.handlers.whatsapp import WhatsAppDeps, bring, let_next_go
from sluice.messages import BATCH_EVENTS, WORK_ITEMS, BatchCompleted, WorkItem
from sluice.outcomes import Ack

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SweepReport:
    taken_over: int = 0
    requeued: int = 0
    callbacks: int = 0
    exports: int = 0
    intakes_published: int = 0
    intakes_abandoned: int = 0
    conversations: int = 0


@dataclass(frozen=True)
class IntakeTimes:
    lease: timedelta  # the sweeper owns an intake it finishes as a request would
    abandon_after: timedelta


def sweep_intakes(
    store: IntakeStore, publisher: Publisher, *, now: datetime, times: IntakeTimes
) -> tuple[int, int]:
    """Finish or abandon the intakes nobody is finishing; (published, abandoned)."""
    published = abandoned = 0
    for job_id, record, updated_at in store.unfinished_intakes():
        action = intake.stale(record, updated_at=updated_at, now=now,
                              abandon_after=times.abandon_after)  # fmt: skip
        if action is None:
            continue
        owner = uuid.uuid4().hex
        # Taken like any request takes it, so a caller retrying right now is never raced.
        _, decision = store.open_intake(
            job_id, {"fingerprint": record.fingerprint}, owner=owner, lease=times.lease
        )
        if not isinstance(decision, intake.Own) or decision.stage is not record.stage:
            continue
        if action is intake.Stale.PUBLISH:
            ids = store.item_ids(job_id)
            publisher.publish(
                WORK_ITEMS, (WorkItem(job_id=job_id, item_id=i).model_dump() for i in ids)
            )
            published += store.advance_intake(
                job_id, owner=owner, to=intake.Stage.PUBLISHED, lease=times.lease
            )
        else:
            abandoned += store.abandon_intake(job_id, owner=owner)
    return published, abandoned


def bring_waiting(whatsapp: WhatsAppDeps, *, now: datetime, idle: timedelta) -> int:
    """Bring back the head of each conversation whose messages wait for capacity (parked, not
    refused: see sluice.domain.conversations); how many were brought."""
    brought = 0
    for phone_id, user, head in whatsapp.conversations.waiting_heads(since_before=now - idle):
        if bring(whatsapp, phone_id, head):
            whatsapp.conversations.brought(phone_id, user, head, at=now)
            brought += 1
        else:  # its item is gone: it will never be answered, so it holds nobody back
            let_next_go(whatsapp, phone_id, user, head)
    return brought


@dataclass(frozen=True)
class SweepDeps:
    intake: IntakeStore
    items: ItemStore
    jobs: JobStore
    callbacks: CallbackStore
    publisher: Publisher
    exports: ExportStore
    whatsapp: WhatsAppDeps
    stall: timedelta
    callback_quiet: timedelta
    export_lease: timedelta
    intakes: IntakeTimes
    # A head parked more recently than a capacity wait may be being tried right now.
    parked_idle: timedelta


def sweep(deps: SweepDeps, *, now: datetime) -> Ack:
    items, publisher, stall = deps.items, deps.publisher, deps.stall
    intakes_published, intakes_abandoned = sweep_intakes(
        deps.intake, publisher, now=now, times=deps.intakes
    )
    taken_over = requeued = 0
    for job_id in deps.jobs.open_batches():
        orphans = [
            item_id
            for item_id, item in items.items_in(job_id, ItemState.RUNNING.value)
            if not lease_live(item, now)
        ]
        taken_over += len(orphans)
        if stalled(deps.jobs.last_progress(job_id), now=now, stall=stall):
            # Only items no delivery has touched for as long: one whose message is in Pub/Sub's
            # retry backoff is claimed (and so touched) at every delivery. One whose message
            # waits for capacity is not touched, and cannot be told from one whose message was
            # lost: it gets a new message too, which supersedes the waiting one.
            queued = items.queued_untouched_since(job_id, now - stall)
            requeued += len(queued)
            orphans += queued
        if orphans:
            dispatch = dispatch_at(now)
            publisher.publish(
                WORK_ITEMS,
                (WorkItem(job_id=job_id, item_id=i, dispatch=dispatch).model_dump()
                 for i in orphans),
            )  # fmt: skip
            # Recorded once published (a failed publish leaves the old messages in charge):
            # from now on a delivery of an older message ends there, and the items are left
            # alone for another `stall`.
            items.redispatched(job_id, orphans, dispatch=dispatch, at=now)
    callbacks = deps.callbacks.callbacks_to_send_again(now=now, quiet=deps.callback_quiet)
    if callbacks:
        publisher.publish(
            BATCH_EVENTS,
            (BatchCompleted(job_id=job, completion=n).model_dump() for job, n in callbacks),
        )
    # As soon as the lease expired with work left: a live writer or backfill renews its lease
    # after every write call, so an expired one means its holder died. (A delivery that died is
    # usually delivered again first, and takes its own lease over at once: this is for the event
    # that is not.) A row is older than a lease by the time its dead flusher's lease runs out.
    idle = now - deps.export_lease
    resumed = deps.exports.stalled_backfills(now=now, idle_since=idle)
    resumed |= deps.exports.stranded_rows(now=now, queued_before=idle)
    for job_id in sorted(resumed):
        deps.exports.nudge(job_id, now)
    conversations = bring_waiting(deps.whatsapp, now=now, idle=deps.parked_idle)
    report = SweepReport(taken_over, requeued, len(callbacks), len(resumed), intakes_published,
                         intakes_abandoned, conversations)  # fmt: skip
    if report != SweepReport():
        log.warning("sweep republished %s", report)
    return Ack("sweep", "done", str(report))
