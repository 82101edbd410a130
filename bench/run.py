"""`make bench`: figures measured on the local cloud, side by side in one run.

- webhook-ingest's acknowledgement latency for signed WhatsApp deliveries at a steady load,
  beside the same handler doing the AI call and the reply inline;
- a batch's makespan against its bound under the declared provider limits, with the 429s the
  provider returned (bench/makespan.py);
- the Sheets export's write calls per 1,000 rows, incremental and backfill, and configure-sheets
  latency by job size (bench/sheets.py);
- status-api's latency for jobs of 10, 1,000 and 10,000 items (bench/status.py);
- each function's cold start: import, ready, first request (bench/cold_start.py).

Writes bench/results/latest.json and latest.md, and prints the tables.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
from google.cloud import firestore

from bench import cold_start, makespan, sheets, status
from bench.report import percentile
from sluice.adapters.tenants_store import TenantStore
from sluice.localcloud.cloud import Deployment, LocalCloud
from sluice.localcloud.functions import FunctionProcess
from sluice.topology import Function, FunctionLimits
from tests.whatsapp_payloads import change, delivery, signed, text_message

RESULTS = Path(__file__).parent / "results"
RATE_PER_SECOND = 20
DELIVERIES = 300
PROVIDER_LATENCY_MS = 300
GRAPH_LATENCY_MS = 50
RUNS = 3


def steady_load(url: str, secret: str, phone: str, tag: str) -> list[float]:
    """DELIVERIES signed deliveries at RATE_PER_SECOND; the latency of each, in ms."""
    bodies = [
        signed(delivery(change(phone, messages=[
            text_message(f"1555{n:06d}", f"bench {tag} {n}", wamid=f"wamid.bench.{tag}.{n}")])),
            secret)
        for n in range(DELIVERIES)
    ]  # fmt: skip
    latencies: list[float] = []
    with httpx.Client(timeout=60) as http, ThreadPoolExecutor(64) as pool:

        def send(index: int) -> None:
            time.sleep(max(0.0, start + index / RATE_PER_SECOND - time.monotonic()))
            body, headers = bodies[index]
            t0 = time.perf_counter()
            r = http.post(url, content=body, headers=headers)
            latencies.append((time.perf_counter() - t0) * 1000)
            r.raise_for_status()

        start = time.monotonic()
        list(pool.map(send, range(DELIVERIES)))
    return latencies


def inline_baseline(d: Deployment) -> FunctionProcess:
    limits = FunctionLimits(max_instances=1, concurrency=16, timeout_seconds=60, memory="512Mi")
    fn = FunctionProcess(
        "inline-webhook",
        Function(entry_point="inline_webhook", trigger="http", limits=limits),
        source=Path(__file__).parent / "inline_webhook.py",
        env=d.function_env(),
        log_dir=d.dir,
    )
    fn.start()
    try:
        fn.wait_ready()
    except BaseException:
        fn.stop()
        raise
    return fn


def main() -> int:
    rows = []
    with tempfile.TemporaryDirectory() as tmp, LocalCloud(Path(tmp)).running() as cloud:
        d = cloud.deploy(
            "bench",
            provider_args=["--latency-ms", str(PROVIDER_LATENCY_MS)],
            graph_args=["--latency-ms", str(GRAPH_LATENCY_MS)],
        )
        inline = inline_baseline(d)
        try:
            tenants = TenantStore(firestore.Client(project=d.project))
            tenants.create("bench")
            tenants.add_phone("bench", d.whatsapp["phone_number_id"])
            secret, phone = d.whatsapp["app_secret"], d.whatsapp["phone_number_id"]
            runs: dict[str, list[tuple[float, float]]] = {"sluice": [], "inline": []}
            for run in range(RUNS):
                for name, url in (("sluice", d.url("webhook-ingest") + "/whatsapp/webhook"),
                                  ("inline", inline.url + "/")):  # fmt: skip
                    lat = steady_load(url, secret, phone, f"{name}{run}")
                    runs[name].append((percentile(lat, 0.5), percentile(lat, 0.99)))
            labels = {
                "sluice": "webhook-ingest (publish, then 200)",
                "inline": "inline handler (AI call + reply, then 200)",
            }
            for name, label in labels.items():
                p50 = statistics.median(r[0] for r in runs[name])
                p99 = statistics.median(r[1] for r in runs[name])
                rows.append({"what": label, "p50_ms": round(p50, 1), "p99_ms": round(p99, 1)})
        finally:
            inline.stop()
            d.stop()
        batch = makespan.run(cloud)
        export = sheets.run(cloud)
        status_latency = status.run(cloud)
        cold = cold_start.run(cloud)
    ratio_p50 = rows[1]["p50_ms"] / rows[0]["p50_ms"]
    ratio_p99 = rows[1]["p99_ms"] / rows[0]["p99_ms"]
    report = {
        "machine": f"{platform.machine()}, {platform.system()} {platform.release()}, "
        f"{os.cpu_count()} cores, Python {platform.python_version()}",
        "load": f"{DELIVERIES} signed deliveries at {RATE_PER_SECOND}/s, median of {RUNS} runs; "
        f"provider {PROVIDER_LATENCY_MS} ms, Graph API {GRAPH_LATENCY_MS} ms",
        "whatsapp_ack_latency": rows,
        "inline_over_sluice": {"p50": round(ratio_p50, 1), "p99": round(ratio_p99, 1)},
        "batch_makespan": batch,
        "sheets_export": export,
        "status_latency": status_latency,
        "cold_start": cold,
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "latest.json").write_text(json.dumps(report, indent=2) + "\n")
    md = [
        "## WhatsApp acknowledgement latency",
        "",
        f"Machine: {report['machine']}. Load: {report['load']}.",
        "",
        "| path | p50 ms | p99 ms |",
        "| --- | ---: | ---: |",
        *(f"| {r['what']} | {r['p50_ms']} | {r['p99_ms']} |" for r in rows),
        f"| **inline ÷ Sluice** | **{ratio_p50:.1f}x** | **{ratio_p99:.1f}x** |",
        "",
        *makespan.markdown(batch),
        *sheets.markdown(export),
        *status.markdown(status_latency),
        *cold_start.markdown(cold),
    ]
    (RESULTS / "latest.md").write_text("\n".join(md))
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(main())
