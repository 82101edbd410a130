"""The Sheets export: write calls per 1,000 rows, and how long configure-sheets takes.

- Incremental: a 1,000-item batch with its export configured before it starts, so every row
  goes through sheets-writer while results arrive as fast as the local cloud produces them.
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

from sluice.adapters.jobs_store import JobStore, new_item_doc
from sluice.adapters.tenants_store import TenantStore
from sluice.localcloud.cloud import LocalCloud

INCREMENTAL_ITEMS = 1000
SMALL, LARGE = 10, 10_000
SMALL_JOBS, LARGE_JOBS = 5, 2
FAST_AI = {"providers": {"ai": {"requests_per_minute": 60000, "max_concurrent": 10}}}


def seed_finished_job(db: firestore.Client, tenant: str, job_id: str, n: int) -> None:
    """A completed job of n succeeded items, as the processor leaves one."""
    job = {"tenant": tenant, "kind": "summarize", "total": n, "state": "completed",
           "intake": "published", "params": {}}  # fmt: skip
    JobStore(db, shards=8).create_job(job_id, job)
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
    d = cloud.deploy(project, topology_overrides=FAST_AI)
    try:
        headers = {"Authorization": f"Bearer {tenant.api_key}"}
        with httpx.Client(timeout=120) as http:
            # Incremental: configured before the first result.
            inputs = [{"input": f"item {n}"} for n in range(INCREMENTAL_ITEMS)]
            body = {"kind": "summarize", "items": inputs}
            accepted = http.post(d.url("webhook-ingest") + "/v1/batches", json=body,
                                 headers=headers).json()  # fmt: skip
            before = writes(http, d.sheets_url)
            http.post(accepted["status_url"] + "/sheets", headers=headers).raise_for_status()
            started = time.monotonic()
            done = wait_export(http, accepted["status_url"] + "/sheets", headers,
                               INCREMENTAL_ITEMS, timeout=600)  # fmt: skip
            incremental_s = time.monotonic() - started
            incremental_calls = writes(http, d.sheets_url) - before - 1  # less the create
            incremental_rows = done["rows_written"]

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
        "incremental": {
            "rows": incremental_rows,
            "write_calls": incremental_calls,
            "calls_per_1000_rows": round(incremental_calls * 1000 / incremental_rows, 1),
            "seconds": round(incremental_s, 1),
        },
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
    inc, back, conf = result["incremental"], result["backfill"], result["configure_ms"]
    samples = result["configure_samples"]
    return [
        "## Sheets export",
        "",
        "Write calls counted by the local Sheets server, under the real quota (60 write requests "
        "a minute). Incremental: a 1,000-item batch configured before its first result. "
        f"Backfill: {SMALL_JOBS} jobs of {SMALL} and {LARGE_JOBS} of {LARGE:,} results, "
        "all finished before configuring.",
        "",
        "| export | rows | write calls | calls per 1,000 rows | seconds |",
        "| --- | ---: | ---: | ---: | ---: |",
        f"| incremental (sheets-writer) | {inc['rows']} | {inc['write_calls']} "
        f"| {inc['calls_per_1000_rows']} | {inc['seconds']} |",
        f"| backfill | {back['rows']} | {back['write_calls']} "
        f"| {back['calls_per_1000_rows']} | {back['seconds']} |",
        "",
        "| configure-sheets, job of | median ms | calls |",
        "| --- | ---: | ---: |",
        f"| {SMALL} results | {conf[str(SMALL)]} | {samples[str(SMALL)]} |",
        f"| {LARGE:,} results | {conf[str(LARGE)]} | {samples[str(LARGE)]} |",
        "",
        f"429s from the Sheets server: {result['sheets_429s']}.",
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
