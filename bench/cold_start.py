"""Each function's cold start on the local cloud, in three parts, each the median of RUNS:

- import: a fresh interpreter importing the function's `main.py` (and the shared package it
  pulls in), which is what Cloud Run pays before the first request of a new instance;
- ready: from spawning a fresh functions-framework process until it answers at all;
- first request: the first real request to that fresh process, one that builds its clients
  (Firestore, Pub/Sub, Sheets): `/healthz` for the HTTP functions, a sweep for the processor, a
  Firestore change event for sheets-writer and backfill.

Run alone with `make bench PARTS=cold_start`.
"""

from __future__ import annotations

import base64
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from bench.report import table
from localcloud.cloud import Deployment, LocalCloud
from localcloud.functions import FunctionProcess
from testkit.firestore_events import firestore_event

ROOT = Path(__file__).resolve().parents[1]
SERVICES = ROOT / "services"
RUNS = 3
GOAL_MS = 1200  # spawn to first answered request, every function (issue 15)

Request = tuple[str, str, bytes, dict[str, str]]


def _sweep(d: Deployment) -> Request:
    data = base64.b64encode(json.dumps({"type": "sweep"}).encode()).decode()
    body = {
        "message": {"data": data, "messageId": "cold-1", "publishTime": "2026-01-01T00:00:00Z"},
        "subscription": f"projects/{d.project}/subscriptions/sweeps-to-processor",
    }
    path = f"/projects/{d.project}/topics/sweeps"
    return "POST", path, json.dumps(body).encode(), {"Content-Type": "application/json"}


def _item_written(d: Deployment) -> Request:
    body, headers = firestore_event(d.project, "jobs/cold/items/i1", {"state": "succeeded"})
    return "POST", "/", body, headers


def _export_written(d: Deployment) -> Request:
    body, headers = firestore_event(d.project, "jobs/cold/exports/sheets", {"state": "gone"})
    return "POST", "/", body, headers


def _health(d: Deployment) -> Request:
    return "GET", "/healthz", b"", {}


FIRST_REQUEST: dict[str, Callable[[Deployment], Request]] = {
    "webhook-ingest": _health,
    "status-api": _health,
    "batch-item-processor": _sweep,
    "sheets-writer": _item_written,
    "backfill": _export_written,
}


def import_ms(function: str) -> float:
    probe = "import time; t = time.perf_counter(); import main; print(time.perf_counter() - t)"
    env = {**os.environ, "PYTHONPATH": str(ROOT / "shared")}
    run = subprocess.run([sys.executable, "-c", probe], cwd=SERVICES / function, env=env,
                         capture_output=True, text=True, check=True)  # fmt: skip
    return float(run.stdout.strip().splitlines()[-1]) * 1000


def start_and_first_request(
    d: Deployment, function: str, request: Request, log_dir: Path
) -> tuple[float, float]:
    spec = d.topology.functions[function]
    fn = FunctionProcess(function, spec, source=SERVICES / function / "main.py",
                         env=d.function_env(spec), log_dir=log_dir)  # fmt: skip
    method, path, body, headers = request
    started = time.perf_counter()
    fn.serve()
    try:
        ready = time.perf_counter()
        answer = httpx.request(method, fn.url + path, content=body, headers=headers, timeout=60)
        done = time.perf_counter()
        if answer.status_code >= 300:
            raise RuntimeError(f"{function}'s first request answered {answer.status_code}")
    finally:
        fn.stop()
    return (ready - started) * 1000, (done - ready) * 1000


def run(cloud: LocalCloud) -> list[dict[str, Any]]:
    d = cloud.deploy("bench-cold")
    rows = []
    try:
        for function, make_request in FIRST_REQUEST.items():
            request = make_request(d)
            imports = [import_ms(function) for _ in range(RUNS)]
            starts = [start_and_first_request(d, function, request, d.dir / "cold")
                      for _ in range(RUNS)]  # fmt: skip
            rows.append({
                "function": function,
                "import_ms": round(statistics.median(imports)),
                "ready_ms": round(statistics.median(s[0] for s in starts)),
                "first_request_ms": round(statistics.median(s[1] for s in starts)),
                "first_answer_ms": round(statistics.median(s[0] + s[1] for s in starts)),
                "first_request": " ".join(request[:2]).replace(d.project, "{p}"),
            })  # fmt: skip
    finally:
        d.stop()
    return rows


def markdown(rows: list[dict[str, Any]]) -> list[str]:
    return [
        "## Cold start per function",
        "",
        f"Median of {RUNS} fresh processes each. *import*: importing `main.py` in a fresh "
        "interpreter; *ready*: spawn until the process answers; *first request*: the first real "
        "request, which builds the function's clients; *spawn to first answer*: the two "
        f"together (goal ≤ {GOAL_MS} ms).",
        "",
        *table(
            [
                "function",
                ">import ms",
                ">ready ms",
                ">first request ms",
                ">spawn to first answer ms",
                "first request",
            ],
            (
                [
                    r["function"],
                    r["import_ms"],
                    r["ready_ms"],
                    r["first_request_ms"],
                    f"{r['first_answer_ms']} {'✓' if r['first_answer_ms'] <= GOAL_MS else '✗'}",
                    f"`{r['first_request']}`",
                ]
                for r in rows
            ),
        ),
        "",
    ]
