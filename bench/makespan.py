"""A 1,000-item batch's makespan against its bound, for three provider profiles, and the
orchestration overhead per item with an instant provider.

The bound is what no scheduler can beat: max(a minute per full sliding window after the first,
calls x latency / concurrency), over the calls the provider accepted (with a provider that fails
10% of calls, the retries are calls too), at the share of the declared limits that bulk work
may use: it leaves a reserve to WhatsApp replies (the last of its five permit shards: a fifth of
the slots and of the rate). The provider server enforces exactly the declared limits, so every
call Sluice sends over them comes back as a 429: the count of 429s says how well the shared
limiter kept to them.

The failing profile's batch also has its Sheets export configured right after the 202, so the
incremental writer's calls per 1,000 rows are measured on it (bench/sheets.py reports them).

Messages reach the processor through the local cloud's push relay (localcloud/push_relay.py) at
what its instances serve at once, as Cloud Run would take them from push, not through the
emulator's own push, which sends two at a time: so the concurrency-bound profile can declare as
many calls at once as a real provider does.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import httpx
from google.cloud import firestore

from bench.report import table
from bench.sheets import wait_export, writes
from localcloud.cloud import LocalCloud
from sluice.adapters.tenants_store import TenantStore
from sluice.domain import limits
from testkit.client import bearer, submit

ITEMS = 1000


@dataclass(frozen=True)
class Profile:
    name: str
    per_minute: int
    concurrent: int
    latency_ms: int
    failure_rate: float = 0.0
    export: bool = False  # configure the Sheets export right after the 202

    def provider_args(self) -> list[str]:
        return ["--latency-ms", str(self.latency_ms), "--failure-rate", str(self.failure_rate),
                "--rate-limit-per-minute", str(self.per_minute),
                "--max-concurrent", str(self.concurrent), "--seed", "7"]  # fmt: skip

    def bulk_share(self, shards: int) -> tuple[int, int]:
        """The calls a minute and at once that bulk work may use, as the limiter decides."""
        shares = limits.shard_shares(self.concurrent, self.per_minute, shards, 1.0)
        bulk = limits.usable_shards(shares, interactive=False)
        return sum(bulk.values()), sum(shares[i][0] for i in bulk)

    def bound(self, calls: int, shards: int) -> float:
        """What no scheduler can beat. The window is sliding: the first `rate` calls may all go
        at once, and each later one waits until the call `rate` places before it is a minute
        old; so the window alone needs a minute per full window's worth after the first."""
        rate, slots = self.bulk_share(shards)
        window = 60.0 * ((calls - 1) // rate) if calls else 0.0
        return max(window, calls * self.latency_ms / 1000 / slots)


INSTANT = Profile("instant provider (overhead)", 1_000_000, 10, 0)
PROFILES = (
    # 600 a minute leaves bulk work 480: the 1,000 calls need three windows, two minutes.
    Profile("rate-bound", 600, 10, 50),
    # Ten at once leaves bulk work eight, 200 ms each.
    Profile("concurrency-bound", 100_000, 10, 200),
    Profile("failing 10% (rate-bound)", 600, 10, 50, failure_rate=0.1, export=True),
)


def one_batch(cloud: LocalCloud, profile: Profile) -> dict[str, Any]:
    declared = {"requests_per_minute": profile.per_minute, "max_concurrent": profile.concurrent}
    d = cloud.deploy(
        "bench-makespan-" + profile.name.split()[0],
        topology_overrides={"providers": {"ai": declared}},
        provider_args=profile.provider_args(),
    )
    try:
        key = TenantStore(firestore.Client(project=d.project)).create("bench", sheets=True).api_key
        headers = bearer(key)
        with httpx.Client(timeout=60) as http:
            accepted = submit(http, d, key, inputs=[f"item {n}" for n in range(ITEMS)])
            started = time.monotonic()  # from the 202: the processing, not the intake
            status_url = accepted["status_url"]
            if profile.export:
                http.post(status_url + "/sheets", headers=headers).raise_for_status()
                created = writes(http, d.sheets_url)  # the spreadsheet's creation
            while (status := http.get(status_url, headers=headers).json())["state"] != "completed":
                time.sleep(0.2)
            makespan = time.monotonic() - started
            stats = http.get(d.provider_url + "/_sluice/stats").json()
            if profile.export:
                done = wait_export(
                    http, status_url + "/sheets", headers, status["counts"]["succeeded"], 300
                )
                incremental = {
                    "rows": done["rows_written"],
                    "write_calls": writes(http, d.sheets_url) - created,
                    "seconds_after_batch": round(time.monotonic() - started - makespan, 1),
                }
        # Invocations counted on the wire: the events the Eventarc router delivered.
        time.sleep(2)  # the emulator posts an event moments after its commit
        invocations = {
            spec.function: cloud.router.count(d.project, trigger, "delivered")
            for trigger, spec in d.topology.firestore_triggers.items()
        }
    finally:
        d.stop()
    by_status = stats["by_status"]
    refused = by_status.get("429", 0)
    calls = sum(by_status.values()) - refused  # what the provider accepted, failures included
    bound = profile.bound(calls, d.topology.work.rate_shards)
    rate, slots = profile.bulk_share(d.topology.work.rate_shards)
    return {
        "profile": profile.name,
        "declared": f"{profile.per_minute:,}/min, {profile.concurrent} at once, "
        f"{profile.latency_ms} ms"
        + (f", {profile.failure_rate:.0%} fail" if profile.failure_rate else ""),
        "bulk_share": f"{rate:,}/min, {slots} at once",
        "succeeded": status["counts"]["succeeded"],
        "failed": status["counts"]["failed"],
        "provider_calls": calls,
        "makespan_s": round(makespan, 1),
        "bound_s": round(bound, 1),
        "makespan_over_bound": round(makespan / bound, 2) if bound else None,
        "provider_429s": refused,
        "provider_max_in_flight": stats["max_in_flight"],
        "ms_per_item": round(makespan * 1000 / ITEMS, 1),
        "export": profile.export,
        "trigger_invocations": invocations,
        **({"sheets_incremental": incremental} if profile.export else {}),
    }


def run(cloud: LocalCloud) -> dict[str, Any]:
    overhead = one_batch(cloud, INSTANT)
    return {"items": ITEMS, "overhead": overhead,
            "profiles": [one_batch(cloud, p) for p in PROFILES]}  # fmt: skip


def markdown(result: dict[str, Any]) -> list[str]:
    o = result["overhead"]
    rows = [
        (p["profile"], p["declared"], p["bulk_share"], p["makespan_s"], p["bound_s"],
         f"**{p['makespan_over_bound']}x**", p["provider_429s"], p["provider_max_in_flight"],
         f"{p['succeeded']} / {p['failed']}",
         "yes" if p.get("export") else "no",
         p["trigger_invocations"].get("sheets-writer", 0),
         p["trigger_invocations"].get("backfill", 0))
        for p in result["profiles"]
    ]  # fmt: skip
    return [
        f"## batch-item-processor: a {result['items']:,}-item batch",
        "",
        "Makespan from the 202 to `completed`; bound = max(60 s x ⌊(calls - 1) ÷ rate⌋, "
        "calls x latency ÷ concurrency) over the calls the provider accepted (the window is "
        "sliding: the first minute's calls may all go at once), at the bulk share of the declared "
        "limits (bulk work leaves the last of five permit shards, a fifth of the slots and "
        "of the rate, to WhatsApp replies); the provider server enforces the declared limits "
        "and answers 429 past them. "
        "Messages reach the processor through the local cloud's push relay, at what its "
        "instances serve at once (goals: rate-bound ≤ 1.05x, concurrency-bound ≤ 1.10x, "
        "failing 10% ≤ 1.15x, zero 429s).",
        "",
        *table(
            [
                "profile",
                "declared",
                "bulk share",
                ">makespan s",
                ">bound s",
                ">makespan ÷ bound",
                ">429s",
                ">max in flight",
                ">succeeded / failed",
                "export",
                ">sheets-writer calls",
                ">backfill calls",
            ],
            rows,
        ),
        "",
        "Sheets-writer and backfill calls: the Firestore events the local Eventarc router "
        "delivered for the batch (a job without an export should cost none; with one, at most "
        "one sheets-writer call per result).",
        "",
        f"Orchestration overhead with an instant provider: {o['makespan_s']} s for "
        f"{result['items']:,} items, **{o['ms_per_item']} ms per item** "
        f"({result['items'] / o['makespan_s']:.0f} items/s; goal: at least 100 items/s).",
        "",
    ]
