"""A batch's makespan against its bound under the declared provider limits.

The bound is what no scheduler can beat: max(items / rate, items x latency / concurrency). The
provider server enforces exactly the declared limits, so every call Sluice sends over them comes
back as a 429, and the count of 429s says how well the shared limiter kept to them.
"""

from __future__ import annotations

import time
from typing import Any

import httpx
from google.cloud import firestore

from sluice.adapters.tenants_store import TenantStore
from sluice.localcloud.cloud import LocalCloud

ITEMS = 300
RATE_PER_MINUTE = 600
CONCURRENT = 5
LATENCY_MS = 300


def run(cloud: LocalCloud) -> dict[str, Any]:
    declared = {"requests_per_minute": RATE_PER_MINUTE, "max_concurrent": CONCURRENT}
    enforced = [
        "--rate-limit-per-minute",
        str(RATE_PER_MINUTE),
        "--max-concurrent",
        str(CONCURRENT),
    ]
    d = cloud.deploy(
        "bench-makespan",
        topology_overrides={"providers": {"ai": declared}},
        provider_args=["--latency-ms", str(LATENCY_MS), *enforced],
    )
    try:
        key = TenantStore(firestore.Client(project=d.project)).create("bench").api_key
        headers = {"Authorization": f"Bearer {key}"}
        body = {"kind": "summarize", "items": [{"input": f"item {n}"} for n in range(ITEMS)]}
        with httpx.Client(timeout=60) as http:
            started = time.monotonic()
            url = d.url("webhook-ingest") + "/v1/batches"
            accepted = http.post(url, json=body, headers=headers)
            accepted.raise_for_status()
            status_url = accepted.json()["status_url"]
            while (status := http.get(status_url, headers=headers).json())["state"] != "completed":
                time.sleep(0.25)
            makespan = time.monotonic() - started
            stats = http.get(d.provider_url + "/_sluice/stats").json()
    finally:
        d.stop()
    bound = max(ITEMS / (RATE_PER_MINUTE / 60), ITEMS * LATENCY_MS / 1000 / CONCURRENT)
    return {
        "items": ITEMS,
        "declared": f"{RATE_PER_MINUTE}/min, {CONCURRENT} at once; provider {LATENCY_MS} ms",
        "succeeded": status["counts"]["succeeded"],
        "makespan_s": round(makespan, 1),
        "bound_s": round(bound, 1),
        "makespan_over_bound": round(makespan / bound, 2),
        "provider_429s": stats["by_status"].get("429", 0),
        "provider_max_in_flight": stats["max_in_flight"],
        "provider_max_per_minute": stats["max_per_minute"],
    }


def markdown(result: dict[str, Any]) -> list[str]:
    return [
        "## A batch's makespan against its bound",
        "",
        f"{result['items']} items; declared limits {result['declared']}; the provider server "
        "enforces the declared limits (429 past them).",
        "",
        "| makespan s | bound s | makespan ÷ bound | 429s | max in flight | max per minute |",
        "| ---: | ---: | ---: | ---: | ---: | ---: |",
        f"| {result['makespan_s']} | {result['bound_s']} | **{result['makespan_over_bound']}x** "
        f"| {result['provider_429s']} | {result['provider_max_in_flight']} "
        f"| {result['provider_max_per_minute']} |",
        "",
    ]
