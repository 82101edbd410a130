"""webhook-ingest's peak memory under two concurrent 10 MiB batch submissions.

The peak resident set (VmHWM in /proc) of each webhook-ingest process the local cloud started
(the functions-framework master and its gunicorn workers, the instances), before and after two
submissions just under `api.max_body_bytes` sent at once, against the memory the topology
declares for the function.
"""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
from google.cloud import firestore

from bench.report import table
from localcloud.cloud import LocalCloud
from sluice.adapters.tenants_store import TenantStore

FUNCTION = "webhook-ingest"
CONCURRENT = 2


def peak_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return round(int(line.split()[1]) / 1024, 1)
    raise RuntimeError(f"no VmHWM for {pid}")


def body(max_bytes: int, items: int, tag: str) -> bytes:
    """A batch of `items` text inputs, as close under `max_bytes` as whole items allow."""
    overhead = len(json.dumps({"kind": "chat", "items": [{"input": ""}] * items}))
    size = (max_bytes - overhead - 1000) // items
    batch = {"kind": "chat", "items": [{"input": f"{tag}{n:06d}".ljust(size, "x")}
                                        for n in range(items)]}  # fmt: skip
    encoded = json.dumps(batch).encode()
    assert len(encoded) <= max_bytes
    return encoded


def run(cloud: LocalCloud) -> dict[str, Any]:
    d = cloud.deploy("bench-memory")
    try:
        key = TenantStore(firestore.Client(project=d.project)).create("bench").api_key
        fn = d.functions[FUNCTION]
        pids = [p for p in (fn.pid, *fn.worker_pids()) if p is not None]
        before = {pid: peak_mib(pid) for pid in pids}
        api = d.topology.api
        bodies = [body(api.max_body_bytes, api.max_batch_items, f"s{n}-") for n in range(2)]
        url = d.url(FUNCTION) + "/v1/batches"
        headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
        started = time.monotonic()
        with httpx.Client(timeout=300) as http, ThreadPoolExecutor(CONCURRENT) as pool:
            answers = list(pool.map(lambda b: http.post(url, content=b, headers=headers), bodies))
        seconds = time.monotonic() - started
        after = {pid: peak_mib(pid) for pid in pids}
    finally:
        d.stop()
    return {
        "declared": d.topology.functions[FUNCTION].limits.memory,
        "body_bytes": len(bodies[0]),
        "items": api.max_batch_items,
        "statuses": [a.status_code for a in answers],
        "seconds": round(seconds, 1),
        "processes": [
            {
                "pid": pid,
                "role": "master" if pid == pids[0] else "worker",
                "before_mib": before[pid],
                "peak_mib": after[pid],
            }
            for pid in pids
        ],
        "total_peak_mib": round(sum(after.values()), 1),
    }


def markdown(r: dict[str, Any]) -> list[str]:
    return [
        "## webhook-ingest: peak memory",
        "",
        f"{CONCURRENT} batch submissions at once, each {r['body_bytes']:,} bytes "
        f"({r['items']:,} items of text), answered {r['statuses']} in {r['seconds']} s. "
        f"Peak resident memory (VmHWM) of each process; declared memory {r['declared']}.",
        "",
        *table(
            ["process", ">before MiB", ">peak MiB"],
            [(p["role"], p["before_mib"], p["peak_mib"]) for p in r["processes"]],
        ),
        "",
        f"Sum of the peaks: **{r['total_peak_mib']} MiB**.",
        "",
    ]
