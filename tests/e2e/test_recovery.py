"""What no live message will move on, on the local cloud: the scheduler fires the sweeper.

(Dead letters are tested through the processor with Pub/Sub's own dead-letter attributes, in
tests/functions: within a full run the emulator's redelivery of nacked messages slows to minutes,
too slow for a test to wait for the fifth delivery.)"""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from sluice.adapters.intake_store import NewItem
from testkit.client import wait_done
from testkit.stores import stores

pytestmark = pytest.mark.cloud


def test_the_scheduled_sweeper_finishes_items_no_message_reaches(http, deploy, make_tenant, db):
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
    store = stores(db, shards=d.topology.work.counter_shards)
    at = datetime.now(UTC)
    store.intake.create_job("orphans", {
        "tenant": tenant.id, "kind": "chat", "params": {}, "total": 4, "state": "open",
        "intake": "published", "fingerprint": "f", "created_at": at, "updated_at": at,
        "completed_at": None,
    })  # fmt: skip
    orphans = [NewItem(f"i{n}", n, {"text": f"orphan {n}"}) for n in range(4)]
    store.intake.write_items("orphans", orphans, at=at)
    status_url = d.url("status-api") + "/v1/batches/orphans"
    assert wait_done(http, status_url, tenant.api_key, timeout=60)[-1]["counts"]["succeeded"] == 4
