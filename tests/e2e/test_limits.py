"""Provider limits on the local cloud: held across processor instances, waits cost nothing."""

from __future__ import annotations

import pytest

from tests.e2e.test_batch_path import items_of, submit, wait_done

pytestmark = pytest.mark.cloud


def test_the_declared_rate_and_concurrency_hold_across_instances(http, deploy, make_tenant):
    d = deploy(
        topology_overrides={
            "providers": {"ai": {"requests_per_minute": 30, "max_concurrent": 1}},
            "functions": {"batch-item-processor": {"local_instances": 3}},
            "work": {"capacity_wait_seconds": 5},
        },
        provider_args=["--latency-ms", "100"],
    )
    tenant = make_tenant()
    accepted = submit(http, d, tenant.api_key, 30)
    polls = wait_done(http, accepted["status_url"], tenant.api_key, timeout=240)

    assert polls[-1]["counts"]["succeeded"] == 30
    stats = http.get(d.provider_url + "/_sluice/stats").json()
    assert stats["requests"] == 30
    assert stats["max_in_flight"] <= 1
    assert stats["max_per_minute"] <= 30
    # Bulk work keeps a fifth of the budget for interactive work, so these 30 needed a second
    # minute: they waited for it, and not one attempt was spent waiting.
    items = items_of(http, accepted["status_url"], tenant.api_key)
    assert {i["attempts"] for i in items} == {1}
    assert "deferred" in (d.dir / "batch-item-processor.log").read_text()
