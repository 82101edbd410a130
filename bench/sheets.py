"""The Sheets export: write calls per 1,000 rows, and how long configure-sheets takes.

- Incremental: measured on bench/makespan.py's failing-10% batch of 1,000 items, configured
  right after its 202, so every row goes through sheets-writer while results arrive at the
  provider's pace (`incremental` is filled in by bench/run.py).
- Backfill: jobs whose results all finished before the export was configured. Their succeeded
  items are written straight into Firestore (the documents the processor writes) before the
  functions are deployed, so that a 10,000-result job takes seconds to prepare, not the time
  it would take to process, and its writes trigger nothing.
- Configure latency: POST /v1/batches/{id}/sheets for jobs of 10 and 10,000 results.

Write calls are the local Sheets server's own count (create, appendDimension, values writes),
under the real quota of 60 write requests a minute.
"""

from __future__ import annotations

import statistics
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
from google.cloud import firestore

from bench.report import table
from localcloud.cloud import LocalCloud
from sluice.adapters.intake_store import IntakeStore, new_item_doc
from sluice.adapters.job_paths import JobPaths
from sluice.adapters.tenants_store import TenantStore

SMALL, LARGE = 10, 10_000
SMALL_JOBS, LARGE_JOBS = 3, 1


def seed_finished_job(db: firestore.Client, tenant: str, job_id: str, n: int) -> None:
    """A completed job of n succeeded items, as the processor leaves one."""
    job = {"tenant": tenant, "kind": "chat", "total": n, "state": "completed",
           "intake": "published", "params": {}}  # fmt: skip
    IntakeStore(JobPaths(db, shards=8)).create_job(job_id, job)
    at = datetime.now(UTC) - timedelta(minutes=5)
    items = db.collection("jobs").document(job_id).collection("items")
    for start in range(0, n, 500):
        batch = db.batch()
        for i in range(start, min(n, start + 500)):
            doc = new_item_doc(i, {"text": f"doc {i}"}, at)
            doc.update(state="succeeded", result={"content": f"summary {i}"}, attempts=1,
                       finished_at=at + timedelta(milliseconds=i))  # fmt: skip
            batch.set(items.document(f"{i:05d}"), doc)
        batch.commit()


def writes(http: httpx.Client, sheets_url: str) -> int:
    return int(http.get(sheets_url + "/_sluice/stats").json().get("write_requests", 0))


def wait_export(http: httpx.Client, url: str, headers: dict, rows: int, timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        export = http.get(url, headers=headers).json()
        if export.get("backfill_state") == "completed" and export.get("rows_written", 0) >= rows:
            return export
        time.sleep(0.5)
    raise TimeoutError(f"export {url} not complete: {export}")


def run(cloud: LocalCloud) -> dict[str, Any]:
    project = "bench-sheets"
    db = firestore.Client(project=project)
    tenant = TenantStore(db).create("bench", sheets=True)
    jobs = {SMALL: [f"small-{n}" for n in range(SMALL_JOBS)],
            LARGE: [f"large-{n}" for n in range(LARGE_JOBS)]}  # fmt: skip
    for size, ids in jobs.items():
        for job_id in ids:
            seed_finished_job(db, tenant.id, job_id, size)
    d = cloud.deploy(project)
    try:
        headers = {"Authorization": f"Bearer {tenant.api_key}"}
        with httpx.Client(timeout=120) as http:
            # Backfill, and configure latency by job size.
            before = writes(http, d.sheets_url)
            latency: dict[int, list[float]] = {SMALL: [], LARGE: []}
            status = d.url("status-api") + "/v1/batches/"
            for size, ids in jobs.items():
                for job_id in ids:
                    t0 = time.perf_counter()
                    http.post(status + job_id + "/sheets", headers=headers).raise_for_status()
                    latency[size].append((time.perf_counter() - t0) * 1000)
            started = time.monotonic()
            for size, ids in jobs.items():
                for job_id in ids:
                    wait_export(http, status + job_id + "/sheets", headers, size, timeout=900)
            backfill_s = time.monotonic() - started
            configures = SMALL_JOBS + LARGE_JOBS
            backfill_calls = writes(http, d.sheets_url) - before - configures
            backfill_rows = SMALL * SMALL_JOBS + LARGE * LARGE_JOBS
            stats = http.get(d.sheets_url + "/_sluice/stats").json()
    finally:
        d.stop()
    return {
        "backfill": {
            "rows": backfill_rows,
            "write_calls": backfill_calls,
            "calls_per_1000_rows": round(backfill_calls * 1000 / backfill_rows, 1),
            "seconds": round(backfill_s, 1),
        },
        "configure_ms": {
            str(size): round(statistics.median(values), 1) for size, values in latency.items()
        },
        "configure_samples": {str(size): len(values) for size, values in latency.items()},
        "sheets_429s": stats.get("throttled", 0),
    }


def markdown(result: dict[str, Any]) -> list[str]:
    back, conf, samples = result["backfill"], result["configure_ms"], result["configure_samples"]
    rows = [("backfill", f"{back['rows']:,}", back["write_calls"],
             round(back["write_calls"] * 1000 / back["rows"], 1),
             f"{back['seconds']} s for all, from the first configure")]  # fmt: skip
    inc = result.get("incremental")
    if inc:
        calls = inc["write_calls"]
        per_1000 = round(calls * 1000 / inc["rows"], 1)
        after = f"last row {inc['seconds_after_batch']} s after the batch completed"
        rows.insert(0, ("incremental (sheets-writer)", f"{inc['rows']:,}", calls, per_1000, after))
    return [
        "## Sheets export",
        "",
        "Write calls counted by the local Sheets server, under the real quota (60 write requests "
        "a minute). Incremental: the failing-10% batch above (1,000 items), configured right "
        f"after its 202. Backfill: {SMALL_JOBS} jobs of {SMALL} and {LARGE_JOBS} of {LARGE:,} "
        "results, all finished before configuring.",
        "",
        *table(["export", ">rows", ">write calls", ">calls per 1,000 rows", "time"], rows),
        "",
        *table(
            ["configure-sheets, job of", ">median ms", ">calls"],
            [
                (f"{SMALL} results", conf[str(SMALL)], samples[str(SMALL)]),
                (f"{LARGE:,} results", conf[str(LARGE)], samples[str(LARGE)]),
            ],
        ),
        "",
        f"429s from the Sheets server: {result['sheets_429s']}.",
        "",
    ]
