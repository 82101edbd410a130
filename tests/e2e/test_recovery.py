"""What no live message will move on, on the local cloud: the scheduler fires the sweeper, and
Pub/Sub's dead letters are consumed."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from sluice.adapters.jobs_store import JobStore, NewItem
from tests.e2e.test_batch_path import items_of, submit, wait_done

pytestmark = pytest.mark.cloud


def test_the_scheduled_sweeper_and_the_dead_letter_topic_settle_every_item(
    http, deploy, make_tenant, db
):
    d = deploy(
        topology_overrides={
            "schedules": {"sweeper": {"every_seconds": 2}},
            # Longer than the retry backoff below, as it must be (see the sweeper).
            "work": {"stall_seconds": 8, "max_attempts": 50},
            "subscriptions": {
                "work-items-to-processor": {
                    "max_delivery_attempts": 5,
                    "retry": {"minimum_backoff_seconds": 1, "maximum_backoff_seconds": 2},
                }
            },
        }
    )
    tenant = make_tenant()

    # Items stored with no message on any topic, as after a requeue whose publish was lost: only
    # the sweeper, fired by the local cloud's scheduler, can get them done.
    store = JobStore(db, shards=d.topology.work.counter_shards)
    at = datetime.now(UTC)
    store.create_job("orphans", {
        "tenant": tenant.id, "kind": "summarize", "params": {}, "total": 4, "state": "open",
        "intake": "published", "fingerprint": "f", "created_at": at, "updated_at": at,
        "completed_at": None,
    })  # fmt: skip
    store.write_items("orphans", [NewItem(f"i{n}", n, {"text": f"orphan {n}"}) for n in range(4)],
                      at=at)  # fmt: skip
    status_url = d.url("status-api") + "/v1/batches/orphans"
    assert wait_done(http, status_url, tenant.api_key, timeout=60)[-1]["counts"]["succeeded"] == 4

    # A provider failing every call while items may be tried 50 times: the subscription gives up
    # after 5 deliveries, and the dead-letter consumer fails each item with that reason. (The
    # scheduler is paused, as one pauses a Cloud Scheduler job: under the emulator's growing push
    # backoff the sweeper would add fresh messages, each with its own 5 deliveries to go.)
    d.scheduler.stop()
    http.post(d.provider_url + "/_sluice/config", json={"failure_rate": 1.0}).raise_for_status()
    accepted = submit(http, d, tenant.api_key, 3)
    # The emulator's redelivery of nacked messages slows down under load: give it time.
    polls = wait_done(http, accepted["status_url"], tenant.api_key, timeout=360)
    assert polls[-1]["counts"]["failed"] == 3
    for item in items_of(http, accepted["status_url"], tenant.api_key):
        assert item["state"] == "failed"
        assert item["error"].startswith("dead-lettered: ")
        assert item["error"].endswith("gave up after 5 deliveries")
        assert 1 <= item["attempts"] < 50
