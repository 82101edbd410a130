"""status-api: `GET /v1/batches/{id}` latency for jobs of 10, 1,000 and 10,000 items.

The jobs are written straight into Firestore as the processor leaves them (bench/sheets.py's
seed), before the functions deploy, so a 10,000-item job takes seconds to prepare. Counts live
in counter shards, so the answer should cost the same whatever the job's size.

Documents read per call are counted on the wire by a second status-api process whose
Firestore is reached through `localcloud/wire_meter.py`.

Run alone with `make bench PARTS=status`.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import httpx
from google.cloud import firestore

from bench.report import percentile, table
from bench.sheets import seed_finished_job
from localcloud.cloud import Deployment, LocalCloud
from localcloud.functions import FunctionProcess
from localcloud.wire_meter import WireMeter
from sluice.adapters.tenants_store import TenantStore

SIZES = (10, 1_000, 10_000)
CALLS = 60
WARMUP = 5
METERED_CALLS = 5


def metered_status_api(d: Deployment, meter: WireMeter) -> FunctionProcess:
    """status-api as deployed, but reaching Firestore through the meter."""
    spec = d.topology.functions["status-api"]
    return FunctionProcess(
        "status-api-metered",
        spec,
        source=d.functions["status-api"].source,
        env={**d.function_env(spec), "FIRESTORE_EMULATOR_HOST": meter.host},
        log_dir=d.dir,
    ).serve()


def run(cloud: LocalCloud) -> list[dict[str, Any]]:
    project = "bench-status"
    db = firestore.Client(project=project)
    tenant = TenantStore(db).create("bench")
    for size in SIZES:
        seed_finished_job(db, tenant.id, f"job-{size}", size)
    d = cloud.deploy(project)
    meter = WireMeter(cloud.emulators.firestore_host)
    meter.start()
    metered = metered_status_api(d, meter)
    rows = []
    try:
        headers = {"Authorization": f"Bearer {tenant.api_key}"}
        with httpx.Client(timeout=30) as http:
            for size in SIZES:
                url = metered.url + f"/v1/batches/job-{size}"
                http.get(url, headers=headers).raise_for_status()  # the tenant key, cached
                meter.reset()
                for _ in range(METERED_CALLS):
                    http.get(url, headers=headers).raise_for_status()
                documents = meter.documents_read / METERED_CALLS
                url = d.url("status-api") + f"/v1/batches/job-{size}"
                for _ in range(WARMUP):
                    http.get(url, headers=headers).raise_for_status()
                latencies = []
                for _ in range(CALLS):
                    t0 = time.perf_counter()
                    answer = http.get(url, headers=headers)
                    latencies.append((time.perf_counter() - t0) * 1000)
                    answer.raise_for_status()
                assert answer.json()["total"] == size, answer.json()
                rows.append({
                    "items": size,
                    "p50_ms": round(statistics.median(latencies), 1),
                    "p99_ms": round(percentile(latencies, 0.99), 1),
                    "documents_read_per_call": documents,
                })  # fmt: skip
    finally:
        metered.stop()
        meter.stop()
        d.stop()
    return rows


def markdown(rows: list[dict[str, Any]]) -> list[str]:
    small = rows[0]["p50_ms"]
    return [
        "## status-api latency by job size",
        "",
        f"`GET /v1/batches/{{id}}`, {CALLS} sequential calls per job after {WARMUP} warm-up "
        f"calls. Documents read per call: counted on the wire between status-api and Firestore "
        f"(found or missing, as billed), over {METERED_CALLS} calls.",
        "",
        *table(
            [">items", ">p50 ms", ">p99 ms", ">p50 ÷ 10-item p50", ">documents read per call"],
            (
                [
                    f"{r['items']:,}",
                    r["p50_ms"],
                    r["p99_ms"],
                    f"{r['p50_ms'] / small:.2f}x",
                    f"{r['documents_read_per_call']:g}",
                ]
                for r in rows
            ),
        ),
        "",
    ]
