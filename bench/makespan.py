"""A 1,000-item batch's makespan against its bound, for three provider profiles, and the
orchestration overhead per item with an instant provider.

The bound is what no scheduler can beat: max(calls / rate, calls x latency / concurrency), over
the calls the provider accepted (with a provider that fails 10% of calls, the retries are calls
too). The provider server enforces exactly the declared limits, so every call Sluice sends over
them comes back as a 429: the count of 429s says how well the shared limiter kept to them.

Locally the Pub/Sub emulator pushes at most two messages at a time per subscription (two push
threads, fixed in the emulator), so the concurrency-bound profile declares two calls at once: a
higher declared concurrency would measure the emulator, not Sluice. In the cloud push delivery
scales with the subscription's backlog.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import httpx
from google.cloud import firestore

from bench.report import table
from sluice.adapters.tenants_store import TenantStore
from sluice.localcloud.cloud import LocalCloud

ITEMS = 1000


@dataclass(frozen=True)
class Profile:
    name: str
    per_minute: int
    concurrent: int
    latency_ms: int
    failure_rate: float = 0.0

    def provider_args(self) -> list[str]:
        return ["--latency-ms", str(self.latency_ms), "--failure-rate", str(self.failure_rate),
                "--rate-limit-per-minute", str(self.per_minute),
                "--max-concurrent", str(self.concurrent), "--seed", "7"]  # fmt: skip

    def bound(self, calls: int) -> float:
        return max(calls / (self.per_minute / 60), calls * self.latency_ms / 1000 / self.concurrent)


INSTANT = Profile("instant provider (overhead)", 1_000_000, 10, 0)
PROFILES = (
    Profile("rate-bound", 1_200, 10, 50),
    Profile("concurrency-bound", 100_000, 2, 100),
    Profile("failing 10% (rate-bound)", 1_200, 10, 50, failure_rate=0.1),
)


def one_batch(cloud: LocalCloud, profile: Profile) -> dict[str, Any]:
    declared = {"requests_per_minute": profile.per_minute, "max_concurrent": profile.concurrent}
    d = cloud.deploy(
        "bench-makespan-" + profile.name.split()[0],
        topology_overrides={"providers": {"ai": declared}},
        provider_args=profile.provider_args(),
    )
    try:
        key = TenantStore(firestore.Client(project=d.project)).create("bench").api_key
        headers = {"Authorization": f"Bearer {key}"}
        body = {"kind": "summarize", "items": [{"input": f"item {n}"} for n in range(ITEMS)]}
        with httpx.Client(timeout=60) as http:
            accepted = http.post(d.url("webhook-ingest") + "/v1/batches", json=body,
                                 headers=headers)  # fmt: skip
            accepted.raise_for_status()
            started = time.monotonic()  # from the 202: the processing, not the intake
            status_url = accepted.json()["status_url"]
            while (status := http.get(status_url, headers=headers).json())["state"] != "completed":
                time.sleep(0.2)
            makespan = time.monotonic() - started
            stats = http.get(d.provider_url + "/_sluice/stats").json()
    finally:
        d.stop()
    by_status = stats["by_status"]
    refused = by_status.get("429", 0)
    calls = sum(by_status.values()) - refused  # what the provider accepted, failures included
    bound = profile.bound(calls)
    return {
        "profile": profile.name,
        "declared": f"{profile.per_minute:,}/min, {profile.concurrent} at once, "
        f"{profile.latency_ms} ms"
        + (f", {profile.failure_rate:.0%} fail" if profile.failure_rate else ""),
        "succeeded": status["counts"]["succeeded"],
        "failed": status["counts"]["failed"],
        "provider_calls": calls,
        "makespan_s": round(makespan, 1),
        "bound_s": round(bound, 1),
        "makespan_over_bound": round(makespan / bound, 2) if bound else None,
        "provider_429s": refused,
        "provider_max_in_flight": stats["max_in_flight"],
        "ms_per_item": round(makespan * 1000 / ITEMS, 1),
    }


def run(cloud: LocalCloud) -> dict[str, Any]:
    overhead = one_batch(cloud, INSTANT)
    return {"items": ITEMS, "overhead": overhead,
            "profiles": [one_batch(cloud, p) for p in PROFILES]}  # fmt: skip


def markdown(result: dict[str, Any]) -> list[str]:
    o = result["overhead"]
    rows = [
        (p["profile"], p["declared"], p["makespan_s"], p["bound_s"],
         f"**{p['makespan_over_bound']}x**", p["provider_429s"], p["provider_max_in_flight"],
         f"{p['succeeded']} / {p['failed']}")
        for p in result["profiles"]
    ]  # fmt: skip
    return [
        f"## batch-item-processor: a {result['items']:,}-item batch",
        "",
        "Makespan from the 202 to `completed`; bound = max(calls ÷ rate, calls x latency ÷ "
        "concurrency) over the calls the provider accepted; the provider server enforces the "
        "declared limits and answers 429 past them.",
        "",
        *table(
            [
                "profile",
                "declared",
                ">makespan s",
                ">bound s",
                ">makespan ÷ bound",
                ">429s",
                ">max in flight",
                ">succeeded / failed",
            ],
            rows,
        ),
        "",
        f"Orchestration overhead with an instant provider: {o['makespan_s']} s for "
        f"{result['items']:,} items, **{o['ms_per_item']} ms per item** "
        f"({result['items'] / o['makespan_s']:.0f} items/s; the emulator pushes two at a time).",
        "",
    ]


if __name__ == "__main__":
    import json
    import sys
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as tmp, LocalCloud(Path(tmp)).running() as local:
        outcome = run(local)
    print(json.dumps(outcome, indent=2))
    print("\n".join(markdown(outcome)))
    sys.exit(0)
