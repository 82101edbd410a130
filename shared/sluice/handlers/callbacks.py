"""The completion callback: once per completion of a batch, signed, retried until it lands.

`Redeliver` has Pub/Sub deliver the event again after the subscription's backoff (which is the
retry schedule of callbacks; waiting for a callback slot is one of its tries too, since the chain
of one message's deliveries owns the callback); the job records the callback as `sent` after the
CRM's 2xx, so a repeated event sends nothing more. A delivery leases the callback while calling
(see domain.callbacks), so a second message for it (the sweeper's) never adds attempts or POSTs at
the same time. A URL that may not be called (not https, or an address inside our network, checked
once resolved) marks the callback `failed` with the reason, at once. A crash between the CRM's 2xx
and that record sends it twice, with the same `webhook-id`, which receivers use to drop the repeat.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import timedelta

from sluice.adapters.callback_sender import CallbackSender, RefusedCallback
from sluice.adapters.callbacks_store import CallbackStore
from sluice.adapters.jobs_store import JobStore
from sluice.adapters.outside import ProviderError
from sluice.adapters.tenants_store import TenantStore
from sluice.clock import now
from sluice.domain.callbacks import Turn, completed_event, signed_headers, webhook_id
from sluice.domain.jobs import CallbackState
from sluice.handlers.processor import Capacity
from sluice.messages import BatchCompleted
from sluice.outcomes import Ack, Defer, Redeliver

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CallbackDeps:
    jobs: JobStore
    callbacks: CallbackStore
    tenants: TenantStore
    sender: CallbackSender
    capacity: Capacity
    quiet: timedelta  # how long a live delivery chain can go without a delivery
    lease: timedelta  # how long one delivery may take (its ack deadline)
    backoff: timedelta  # the least time between two attempts (the minimum backoff)


def send_completion_callback(deps: CallbackDeps, event: BatchCompleted, *, chain: str) -> Ack:
    """`chain` is the delivery's Pub/Sub message id."""
    job_id, completion = event.job_id, event.completion
    decided = deps.callbacks.lease_callback(
        job_id, completion, chain=chain, now=now(), quiet=deps.quiet, lease=deps.lease
    )
    if decided is Turn.SETTLED:
        return Ack(job_id, "callback", "duplicate delivery")
    if decided is Turn.STEP_ASIDE:
        return Ack(job_id, "callback", "another delivery owns this callback")
    if decided is Turn.WAIT:
        raise Redeliver(f"callback for {job_id} is being sent by another delivery")
    found = deps.jobs.job_with_counts(job_id)
    if found is None:
        return Ack(job_id, "callback", "job missing")
    job, counts = found
    tenant = deps.tenants.get(str(job.get("tenant"))) or {}
    url = job.get("callback_url") or tenant.get("callback_url")
    secret = tenant.get("signing_secret")
    if not url or not secret:
        deps.callbacks.mark_callback(job_id, completion, CallbackState.NO_CALLBACK_URL)
        return Ack(job_id, "callback", "no callback URL")

    def post() -> None:
        body = completed_event(job_id, job, counts.by_state)
        headers = signed_headers(secret, webhook_id(job_id, completion), int(time.time()), body)
        deps.sender.post(url, body, headers)

    try:
        with deps.capacity.permit(str(job.get("tenant"))):
            post()
    except Defer:
        deps.callbacks.callback_not_delivered(
            job_id, completion, error="no callback capacity", retry_at=now() + deps.backoff
        )
        raise Redeliver(f"no callback capacity for {job_id}") from None
    except RefusedCallback as refused:
        # Not retried: the address is not allowed, and would not be the next time either.
        log.warning("callback for %s not sent: %s", job_id, refused)
        deps.callbacks.mark_callback(job_id, completion, CallbackState.FAILED, error=str(refused))
        return Ack(job_id, "callback", str(refused))
    except ProviderError as error:
        deps.callbacks.callback_not_delivered(
            job_id, completion, error=str(error), retry_at=now() + deps.backoff
        )
        raise Redeliver(f"callback for {job_id} not delivered: {error}") from None
    deps.callbacks.mark_callback(job_id, completion, CallbackState.SENT)
    return Ack(job_id, "callback", f"sent to {url}")
