"""The completion callback: once per completion of a batch, signed, retried until it lands.

Raising has Pub/Sub deliver the event again after the subscription's backoff (which is the retry
schedule of callbacks); the job records the callback as `sent` after the CRM's 2xx, so a repeated
event sends nothing more. One message's chain of deliveries owns the callback, and a delivery
leases it while calling (see domain.callbacks), so a second message for it (the sweeper's) never
adds attempts or POSTs at the same time. A URL that may not be called (not https, or an address
inside our network, checked once resolved) marks the callback `failed` with the reason, at once.
A crash between the CRM's 2xx and that record sends it twice, with the same `webhook-id`, which
receivers use to drop the repeat.
"""

from __future__ import annotations

import logging
import time
from datetime import timedelta

from sluice.adapters.callback_sender import CallbackSender, RefusedCallback
from sluice.adapters.jobs_store import JobStore, now
from sluice.adapters.limiter import NoCapacity
from sluice.adapters.outside import ProviderError
from sluice.domain.callbacks import Turn, completed_event, signed_headers, webhook_id
from sluice.handlers.processor import Capacity, Outcome, RedeliverLater
from sluice.messages import BatchCompleted

log = logging.getLogger(__name__)


def send_completion_callback(
    store: JobStore,
    sender: CallbackSender,
    capacity: Capacity,
    event: BatchCompleted,
    *,
    chain: str,
    quiet: timedelta,
    lease: timedelta,
    backoff: timedelta,
) -> Outcome:
    """`chain` is the delivery's Pub/Sub message id; `quiet`, how long a live chain can go
    without a delivery; `lease`, how long one delivery may take (its ack deadline); `backoff`,
    the least time between two attempts (the subscription's minimum backoff)."""
    job_id, completion = event.job_id, event.completion
    decided = store.lease_callback(
        job_id, completion, chain=chain, now=now(), quiet=quiet, lease=lease
    )
    if decided is Turn.SETTLED:
        return Outcome(job_id, "callback", "duplicate delivery")
    if decided is Turn.STEP_ASIDE:
        return Outcome(job_id, "callback", "another delivery owns this callback")
    if decided is Turn.WAIT:
        raise RedeliverLater(f"callback for {job_id} is being sent by another delivery")
    found = store.job_with_counts(job_id)
    if found is None:
        return Outcome(job_id, "callback", "job missing")
    job, counts = found
    tenant = store.tenant(str(job.get("tenant"))) or {}
    url = job.get("callback_url") or tenant.get("callback_url")
    secret = tenant.get("signing_secret")
    if not url or not secret:
        store.mark_callback(job_id, completion, "no_callback_url")
        return Outcome(job_id, "callback", "no callback URL")

    def post() -> None:
        body = completed_event(job_id, job, counts.by_state)
        headers = signed_headers(secret, webhook_id(job_id, completion), int(time.time()), body)
        sender.post(url, body, headers)

    try:
        capacity.limiter.call(
            post, tenant=str(job.get("tenant")), interactive=False, wait=capacity.wait_seconds
        )
    except NoCapacity:
        store.callback_not_delivered(
            job_id, completion, error="no callback capacity", retry_at=now() + backoff
        )
        raise RedeliverLater(f"no callback capacity for {job_id}") from None
    except RefusedCallback as refused:
        # Not retried: the address is not allowed, and would not be the next time either.
        log.warning("callback for %s not sent: %s", job_id, refused)
        store.mark_callback(job_id, completion, "failed", error=str(refused))
        return Outcome(job_id, "callback", str(refused))
    except ProviderError as error:
        store.callback_not_delivered(job_id, completion, error=str(error), retry_at=now() + backoff)
        raise RedeliverLater(f"callback for {job_id} not delivered: {error}") from None
    store.mark_callback(job_id, completion, "sent")
    return Outcome(job_id, "callback", f"sent to {url}")
