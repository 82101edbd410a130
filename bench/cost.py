"""What an item costs, counted on the wire, per function, and priced at Google's list prices.

Three kinds of work, each in a fresh deployment whose every function reaches the emulators
through its own wire meter (localcloud/wire_meter.py) and is reached through its front end,
which counts its invocations and the time it had one in flight (what Cloud Run bills):

- a 1,000-item CRM batch without an export, with the provider allowing 10 calls at once, 5 and
  500 (what a permit costs must not grow with it);
- a 1,000-item CRM batch whose Sheets export is configured right after its 202;
- 200 WhatsApp messages, each from its own user, each answered.

The provider answers at once, so the figures are the orchestration's, not the model's. Completion
is watched in Firestore directly (and at the Graph API server for WhatsApp), not through
status-api, so that no polling of the bench's own is counted; status-api's share is what the
functions themselves cost it (none).

Firestore reads, writes and deletes, and commits; Pub/Sub messages published and their billed
bytes, and push deliveries (the invocations of the functions Pub/Sub pushes to); invocations per
function. Per 1,000 items, and priced below.

Run alone with `make bench PARTS=cost`.
"""

from __future__ import annotations

import time
from dataclasses import asdict
from typing import Any

import httpx
from google.cloud import firestore

from bench.ingest import whatsapp_bodies
from bench.report import table
from localcloud.cloud import Deployment, FunctionUsage, LocalCloud
from localcloud.wire_meter import MIN_BILLED_BYTES
from sluice.adapters.tenants_store import TenantStore
from testkit.client import bearer, submit, wait_for, webhook

ITEMS = 1000
MESSAGES = 200
TIMEOUT = 300  # seconds for a kind of work to finish
# An instant provider under limits it never reaches: what is counted is Sluice's own work.
PROVIDER = {"requests_per_minute": 1_000_000, "max_concurrent": 10}

# List prices in USD, read on 2026-12-07 from Google's pricing pages, for a US region
# (us-central1): Firestore Standard edition; Cloud Run request-based billing, Tier 1 (Cloud Run
# functions run on it), at the functions' 1 vCPU and 512 MiB (terraform/variables.tf, topology
# limits); Pub/Sub message throughput, publish and delivery alike, at least 1,000 bytes per
# request. Free tiers are left out: the figure is what the 1,000 items add to a bill past them.
PRICES_READ_ON = "2026-12-07"
PRICE = {
    "firestore_read": 0.03 / 100_000,
    "firestore_write": 0.09 / 100_000,
    "firestore_delete": 0.01 / 100_000,
    "run_request": 0.40 / 1_000_000,
    "run_vcpu_second": 0.000024,
    "run_gib_second": 0.0000025,
    "pubsub_byte": 40 / 2**40,
}
VCPU, GIB = 1.0, 0.5
# Pub/Sub pushes to these functions: each of their invocations is a billed delivery.
PUSHED = ("batch-item-processor",)


def per_thousand(value: float, items: int) -> float:
    return round(value * 1000 / items, 1)


def priced(usage: dict[str, FunctionUsage]) -> dict[str, float]:
    """USD, by what is billed, for the usage given."""
    wire = [u.wire for u in usage.values()]
    deliveries = sum(u.invocations for name, u in usage.items() if name in PUSHED)
    busy = sum(u.busy_seconds for u in usage.values())
    return {
        "firestore": sum(w.reads for w in wire) * PRICE["firestore_read"]
        + sum(w.writes for w in wire) * PRICE["firestore_write"]
        + sum(w.deletes for w in wire) * PRICE["firestore_delete"],
        "pubsub": (sum(w.publish_bytes_billed for w in wire) + deliveries * MIN_BILLED_BYTES)
        * PRICE["pubsub_byte"],
        "functions": sum(u.invocations for u in usage.values()) * PRICE["run_request"]
        + busy * (VCPU * PRICE["run_vcpu_second"] + GIB * PRICE["run_gib_second"]),
    }


def _settled(d: Deployment) -> dict[str, FunctionUsage]:
    """The usage once nothing is moving any more (a trigger fires moments after its commit)."""
    last = None
    while (now := d.usage()) != last:
        last = now
        time.sleep(2)
    return now


def crm_batch(
    cloud: LocalCloud, *, export: bool, concurrent: int = PROVIDER["max_concurrent"]
) -> dict[str, FunctionUsage]:
    d = cloud.deploy(
        f"bench-cost-{'export' if export else 'crm'}-{concurrent}",
        topology_overrides={"providers": {"ai": {**PROVIDER, "max_concurrent": concurrent}}},
        provider_args=["--latency-ms", "0"],
        metered=True,
    )
    try:
        db = firestore.Client(project=d.project)
        key = TenantStore(db).create("bench", sheets=True).api_key
        with httpx.Client(timeout=60) as http:
            accepted = submit(http, d, key, inputs=[f"item {n}" for n in range(ITEMS)])
            if export:
                http.post(
                    accepted["status_url"] + "/sheets", headers=bearer(key)
                ).raise_for_status()
        job = db.collection("jobs").document(accepted["batch_id"])
        wait_for(lambda: (job.get().to_dict() or {}).get("state") == "completed", TIMEOUT,
                 "the batch")  # fmt: skip
        if export:
            # The export's row allocator counts the rows written (see ExportStore.progress).
            rows = job.collection("exports").document("sheets").collection("state").document("rows")
            wait_for(lambda: (rows.get().to_dict() or {}).get("written", 0) >= ITEMS, TIMEOUT,
                     "the export")  # fmt: skip
        return _settled(d)
    finally:
        d.stop()


def whatsapp(cloud: LocalCloud) -> dict[str, FunctionUsage]:
    d = cloud.deploy(
        "bench-cost-whatsapp",
        topology_overrides={"providers": {"ai": PROVIDER}},
        provider_args=["--latency-ms", "0"],
        metered=True,
    )
    try:
        tenants = TenantStore(firestore.Client(project=d.project))
        tenants.create("bench")
        tenants.add_phone("bench", d.whatsapp["phone_number_id"])
        with httpx.Client(timeout=60) as http:
            for body, headers in whatsapp_bodies(d, "cost", MESSAGES):
                http.post(webhook(d), content=body, headers=headers).raise_for_status()

            def answered() -> bool:
                stats = http.get(d.graph_url + "/_sluice/stats").json()
                return int(stats.get("accepted", 0)) >= MESSAGES

            wait_for(answered, TIMEOUT, "the replies")
        return _settled(d)
    finally:
        d.stop()


def summary(usage: dict[str, FunctionUsage], items: int, started: float) -> dict[str, Any]:
    functions = {
        name: {
            "invocations": per_thousand(u.invocations, items),
            "busy_seconds": per_thousand(u.busy_seconds, items),
            **{k: per_thousand(v, items) for k, v in asdict(u.wire).items()},
        }
        for name, u in usage.items()
    }
    cost = priced(usage)
    return {
        "items": items,
        "seconds": round(time.monotonic() - started, 1),
        "per_1000_items": functions,
        "usd_per_1000_items": {k: round(v * 1000 / items, 5) for k, v in cost.items()},
    }


def run(cloud: LocalCloud) -> dict[str, Any]:
    work = {}
    for name, measure, items in (
        ("CRM item, no export", lambda: crm_batch(cloud, export=False), ITEMS),
        # What a permit costs must not grow with what the provider allows at once.
        (
            "CRM item, provider allowing 5 at once",
            lambda: crm_batch(cloud, export=False, concurrent=5),
            ITEMS,
        ),
        (
            "CRM item, provider allowing 500 at once",
            lambda: crm_batch(cloud, export=False, concurrent=500),
            ITEMS,
        ),
        ("CRM item, Sheets export", lambda: crm_batch(cloud, export=True), ITEMS),
        ("WhatsApp message answered", lambda: whatsapp(cloud), MESSAGES),
    ):
        started = time.monotonic()
        work[name] = summary(measure(), items, started)
    return {"prices_read_on": PRICES_READ_ON, "prices_usd": PRICE, "work": work}


COLUMNS = ("invocations", "reads", "writes", "deletes", "commits", "messages_published")


def markdown(result: dict[str, Any]) -> list[str]:
    rows = []
    for work, s in result["work"].items():
        per = s["per_1000_items"]
        total = {c: sum(f[c] for f in per.values()) for c in COLUMNS}
        for name, f in per.items():
            if any(f[c] for c in COLUMNS):
                rows.append((work, name, *(f"{f[c]:,.0f}" for c in COLUMNS)))
        rows.append((work, "**all**", *(f"**{total[c]:,.0f}**" for c in COLUMNS)))
    costs = [
        (work, *(f"${s['usd_per_1000_items'][k]:.4f}" for k in ("firestore", "pubsub",
                                                                "functions")),
         f"**${sum(s['usd_per_1000_items'].values()):.4f}**")
        for work, s in result["work"].items()
    ]  # fmt: skip
    return [
        "## What an item costs, counted on the wire (per 1,000 items)",
        "",
        "Each function reaches the emulators through its own wire meter and is reached through "
        "its front end; the provider answers at once. Reads, writes and deletes are Firestore "
        "documents as billed; commits are round trips that write; a processor invocation is "
        "one Pub/Sub push delivery (goal for a CRM item without an export, besides the "
        "ingest's share: at most 12 reads, 6 writes, 2 publishes, 1 invocation).",
        "",
        *table(["work", "function", *(">" + c.replace("_", " ") for c in COLUMNS)], rows),
        "",
        f"Infrastructure cost per 1,000 items at list prices read on {result['prices_read_on']}"
        " (USD, us-central1; Firestore Standard, Cloud Run request-based Tier 1 at 1 vCPU and "
        "512 MiB, Pub/Sub throughput; free tiers left out; the provider's own price is not in "
        "it):",
        "",
        *table(["work", ">Firestore", ">Pub/Sub", ">functions", ">total"], costs),
        "",
    ]
