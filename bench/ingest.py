"""webhook-ingest: how fast work is acknowledged, beside handlers that do the work inline.

- WhatsApp: signed deliveries at a steady rate, to webhook-ingest and to the inline handler
  (`bench/inline.py`: the AI call and the reply before the 200), side by side in each run;
- the highest delivery rate webhook-ingest sustains here: rising steps of deliveries a second,
  the highest whose every delivery got its 200, all within the step, p99 under Meta's 1 s;
- CRM batch submissions of 10, 1,000 and 10,000 items, and the inline handler for the size it
  can finish within a request; for larger ones the bound under the declared provider limits
  says how long it would need, which is past the request timeout.

Requests go to each function's own port, not through the local cloud's front end, which runs
inside this process and would share its CPU with the load generator.
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
from google.cloud import firestore

from bench.report import percentile, table
from localcloud.cloud import Deployment, LocalCloud
from localcloud.functions import FunctionProcess
from sluice.adapters.tenants_store import TenantStore
from sluice.topology import Function, FunctionLimits
from testkit.whatsapp_payloads import change, delivery, signed, text_message

RUNS = 3
RATE = 20  # WhatsApp deliveries a second, the steady load
DELIVERIES = 100
PROVIDER_LATENCY_MS = 300
GRAPH_LATENCY_MS = 50
RAMP = (50, 100, 200, 300, 400)  # deliveries a second
STEP_SECONDS = 2
META_P99_MS = 1000.0
# Batch size -> submissions per run, one after another.
SUBMISSIONS = {10: 10, 1_000: 3, 10_000: 1}
INLINE_TIMEOUT_S = 60


def paced(send: Callable[[int], None], count: int, rate: float) -> tuple[list[float], int, float]:
    """Call `send(i)` for i < count at `rate` a second whatever the answers' speed (an open
    loop, as webhooks arrive). Latencies in ms, the errors, and the seconds until the last
    answer."""
    latencies: list[float] = []
    failed: list[int] = []  # appends are atomic; a shared counter would race between threads

    def one(index: int) -> None:
        time.sleep(max(0.0, start + index / rate - time.monotonic()))
        t0 = time.perf_counter()
        try:
            send(index)
        except httpx.HTTPError:
            failed.append(index)
        latencies.append((time.perf_counter() - t0) * 1000)

    with ThreadPoolExecutor(128) as pool:
        start = time.monotonic()
        list(pool.map(one, range(count)))
    return latencies, len(failed), time.monotonic() - start


def whatsapp_bodies(d: Deployment, tag: str, count: int) -> list[tuple[bytes, dict[str, str]]]:
    phone, secret = d.whatsapp["phone_number_id"], d.whatsapp["app_secret"]
    return [
        signed(delivery(change(phone, messages=[
            text_message(f"1555{n:06d}", f"bench {tag} {n}", wamid=f"wamid.bench.{tag}.{n}")])),
            secret)
        for n in range(count)
    ]  # fmt: skip


def post_each(http: httpx.Client, url: str, bodies: list[tuple[bytes, dict[str, str]]]):
    def send(index: int) -> None:
        body, headers = bodies[index]
        http.post(url, content=body, headers=headers).raise_for_status()

    return send


def start_inline(d: Deployment) -> FunctionProcess:
    limits = FunctionLimits(
        max_instances=1, concurrency=16, timeout_seconds=INLINE_TIMEOUT_S, memory="512Mi"
    )
    # It checks the signature, calls the provider and replies, all in the request.
    needs = ["whatsapp_app_secret", "ai_provider_url", "ai_provider_api_key",
             "whatsapp_access_token"]  # fmt: skip
    inline = Function(entry_point="inline", trigger="http", limits=limits, needs=needs)
    return FunctionProcess(
        "inline",
        inline,
        source=Path(__file__).parent / "inline.py",
        env=d.function_env(inline),
        log_dir=d.dir,
    ).serve()


def direct(fn: FunctionProcess) -> str:
    return f"http://127.0.0.1:{fn.port}"


def whatsapp_latency(http: httpx.Client, d: Deployment, inline: str) -> list[dict[str, Any]]:
    urls = {"sluice": direct(d.functions["webhook-ingest"]) + "/whatsapp/webhook",
            "inline": inline + "/whatsapp"}  # fmt: skip
    runs: dict[str, list[tuple[float, float]]] = {name: [] for name in urls}
    for run in range(RUNS):
        for name, url in urls.items():
            bodies = whatsapp_bodies(d, f"{name}{run}", DELIVERIES)
            lat, errors, _ = paced(post_each(http, url, bodies), DELIVERIES, RATE)
            assert errors == 0, f"{errors} of the {name} deliveries failed"
            runs[name].append((percentile(lat, 0.5), percentile(lat, 0.99)))
    return [
        {
            "path": name,
            "p50_ms": round(statistics.median(r[0] for r in runs[name]), 1),
            "p99_ms": round(statistics.median(r[1] for r in runs[name]), 1),
        }
        for name in urls
    ]


def highest_rate(http: httpx.Client, d: Deployment) -> dict[str, Any]:
    url = direct(d.functions["webhook-ingest"]) + "/whatsapp/webhook"
    best: list[dict[str, Any]] = []
    for run in range(RUNS):
        sustained: dict[str, Any] = {"rate": 0}
        for rate in RAMP:
            count = rate * STEP_SECONDS
            bodies = whatsapp_bodies(d, f"ramp{run}.{rate}", count)
            lat, errors, took = paced(post_each(http, url, bodies), count, rate)
            p99 = percentile(lat, 0.99)
            if errors or p99 > META_P99_MS or took > STEP_SECONDS * 1.1:
                break
            sustained = {"rate": rate, "p50_ms": round(percentile(lat, 0.5), 1),
                         "p99_ms": round(p99, 1)}  # fmt: skip
        best.append(sustained)
    median = statistics.median(b["rate"] for b in best)
    return {"per_run": best, "deliveries_per_s": median}


def submissions(http: httpx.Client, d: Deployment, inline: str, key: str) -> list[dict[str, Any]]:
    sluice = direct(d.functions["webhook-ingest"]) + "/v1/batches"
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    ai = d.topology.providers.ai
    rows = []
    for size, count in SUBMISSIONS.items():
        body = json.dumps(
            {"kind": "chat", "items": [{"input": f"item {n}"} for n in range(size)]}
        ).encode()
        bound = max(size / (ai.requests_per_minute / 60),
                    size * PROVIDER_LATENCY_MS / 1000 / ai.max_concurrent)  # fmt: skip
        row: dict[str, Any] = {"items": size, "inline_bound_s": round(bound, 1)}
        for name, url in (("sluice", sluice), ("inline", inline + "/batches")):
            if name == "inline" and bound >= INLINE_TIMEOUT_S:
                continue  # it cannot answer within a request; the bound says how long it needs
            p50s, p99s = [], []
            for _ in range(RUNS):
                lat = []
                for _ in range(count):
                    t0 = time.perf_counter()
                    http.post(url, content=body, headers=headers).raise_for_status()
                    lat.append((time.perf_counter() - t0) * 1000)
                p50s.append(percentile(lat, 0.5))
                p99s.append(percentile(lat, 0.99))
            row[f"{name}_p50_ms"] = round(statistics.median(p50s), 1)
            row[f"{name}_p99_ms"] = round(statistics.median(p99s), 1)
        rows.append(row)
    return rows


def run(cloud: LocalCloud) -> dict[str, Any]:
    d = cloud.deploy(
        "bench-ingest",
        provider_args=["--latency-ms", str(PROVIDER_LATENCY_MS)],
        graph_args=["--latency-ms", str(GRAPH_LATENCY_MS)],
    )
    inline = start_inline(d)
    try:
        tenants = TenantStore(firestore.Client(project=d.project))
        key = tenants.create("bench").api_key
        tenants.add_phone("bench", d.whatsapp["phone_number_id"])
        with httpx.Client(timeout=120, limits=httpx.Limits(max_connections=128)) as http:
            whatsapp = whatsapp_latency(http, d, direct(inline))
            rate = highest_rate(http, d)
            batches = submissions(http, d, direct(inline), key)
    finally:
        inline.stop()
        d.stop()
    ratio = {q: round(whatsapp[1][f"{q}_ms"] / whatsapp[0][f"{q}_ms"], 1) for q in ("p50", "p99")}
    return {
        "load": f"{DELIVERIES} signed deliveries at {RATE}/s, median of {RUNS} runs; "
        f"provider {PROVIDER_LATENCY_MS} ms, Graph API {GRAPH_LATENCY_MS} ms",
        "whatsapp": whatsapp,
        "inline_over_sluice": ratio,
        "highest_rate": rate,
        "batches": batches,
        "ai_limits": f"{d.topology.providers.ai.requests_per_minute}/min, "
        f"{d.topology.providers.ai.max_concurrent} at once",
    }


def markdown(r: dict[str, Any]) -> list[str]:
    labels = {"sluice": "webhook-ingest (publish, then 200)",
              "inline": "inline handler (AI call + reply, then 200)"}  # fmt: skip
    rate = r["highest_rate"]
    batch_rows = []
    for b in r["batches"]:
        inline = (
            f"{b['inline_p50_ms']} / {b['inline_p99_ms']}"
            if "inline_p50_ms" in b
            else f"≥ {b['inline_bound_s']:g} s: past the {INLINE_TIMEOUT_S} s timeout"
        )
        ratio = (
            f"**{b['inline_p50_ms'] / b['sluice_p50_ms']:.1f}x**" if "inline_p50_ms" in b else "-"
        )
        batch_rows.append(
            (f"{b['items']:,}", f"{b['sluice_p50_ms']} / {b['sluice_p99_ms']}", inline, ratio)
        )
    return [
        "## webhook-ingest: acknowledgement",
        "",
        f"WhatsApp: {r['load']}.",
        "",
        *table(
            ["path", ">p50 ms", ">p99 ms"],
            [(labels[w["path"]], w["p50_ms"], w["p99_ms"]) for w in r["whatsapp"]],
        ),
        f"| **inline ÷ Sluice** | **{r['inline_over_sluice']['p50']}x** "
        f"| **{r['inline_over_sluice']['p99']}x** |",
        "",
        f"Highest sustained WhatsApp delivery rate (steps of {', '.join(map(str, RAMP))}/s, "
        f"{STEP_SECONDS} s each; every delivery answered 200 within the step, p99 under 1 s): "
        f"**{rate['deliveries_per_s']:g} deliveries/s** (median of {RUNS} ramps: "
        + ", ".join(
            f"{b['rate']}/s" + (f" p99 {b['p99_ms']} ms" if "p99_ms" in b else "")
            for b in rate["per_run"]
        )
        + ").",
        "",
        f"CRM batch submissions, one after another (10 items: {SUBMISSIONS[10]} a run; 1,000: "
        f"{SUBMISSIONS[1_000]}; 10,000: {SUBMISSIONS[10_000]}), median of {RUNS} runs; the "
        f"inline handler calls the provider for every item before answering, within the "
        f"declared {r['ai_limits']}:",
        "",
        *table(
            [">items", ">Sluice p50 / p99 ms", ">inline p50 / p99 ms", ">inline ÷ Sluice"],
            batch_rows,
        ),
        "",
    ]
