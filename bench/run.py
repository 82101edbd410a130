"""`make bench`: one report of speed, cost and scale, measured on the local cloud.

Each part deploys what it measures into its own project on one pair of emulators:

- webhook-ingest: acknowledgement latency for WhatsApp deliveries and CRM batches beside inline
  handlers, and the highest sustained delivery rate (bench/ingest.py); its peak memory under two
  concurrent 10 MiB submissions (bench/memory.py);
- batch-item-processor: a 1,000-item batch's makespan against its bound for three provider
  profiles, and the overhead per item with an instant provider (bench/makespan.py);
- the shipped pipelines: a 1,000-photo staging batch against its bottleneck provider's bound,
  and a WhatsApp reply's latency with its three model calls (bench/pipelines.py);
- the Sheets export: write calls per 1,000 rows and configure latency (bench/sheets.py);
- status-api: latency and documents read by job size (bench/status.py);
- each function's cold start (bench/cold_start.py).

Writes bench/results/latest.json and latest.md, and prints the Markdown.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench import cold_start, cost, ingest, makespan, memory, pipelines, sheets, status
from localcloud.cloud import LocalCloud

RESULTS = Path(__file__).parent / "results"

PARTS: dict[str, tuple[Callable[[LocalCloud], Any], Callable[[Any], list[str]]]] = {
    "ingest": (ingest.run, ingest.markdown),
    "memory": (memory.run, memory.markdown),
    "makespan": (makespan.run, makespan.markdown),
    "pipelines": (pipelines.run, pipelines.markdown),
    "cost": (cost.run, cost.markdown),
    "sheets_export": (sheets.run, sheets.markdown),
    "status": (status.run, status.markdown),
    "cold_start": (cold_start.run, cold_start.markdown),
}


def machine() -> str:
    cpu = next(
        (line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
         if line.startswith("model name")),
        platform.processor() or platform.machine(),
    )  # fmt: skip
    memory_kb = next(
        int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()
        if line.startswith("MemTotal")
    )  # fmt: skip
    return (
        f"{cpu}, {os.cpu_count()} cores, {memory_kb / 1024 / 1024:.0f} GiB, "
        f"{platform.system()} {platform.release()}, Python {platform.python_version()}"
    )


def main(names: list[str]) -> int:
    chosen = names or list(PARTS)
    unknown = set(chosen) - set(PARTS)
    if unknown:
        print(f"unknown parts {sorted(unknown)}; choose from {list(PARTS)}", file=sys.stderr)
        return 2
    report: dict[str, Any] = {"machine": machine(), "seconds": {}}
    started = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp, LocalCloud(Path(tmp)).running() as cloud:
        for name in chosen:
            t0 = time.monotonic()
            report[name] = PARTS[name][0](cloud)
            report["seconds"][name] = round(time.monotonic() - t0, 1)
            print(f"{name}: {report['seconds'][name]} s", file=sys.stderr, flush=True)
    report["seconds"]["total"] = round(time.monotonic() - started, 1)
    # The incremental Sheets writer is measured on the makespan's failing-profile batch.
    for profile in report.get("makespan", {}).get("profiles", []):
        if "sheets_incremental" in profile and "sheets_export" in report:
            report["sheets_export"]["incremental"] = profile.pop("sheets_incremental")
    md = [
        f"Machine: {report['machine']}. `make bench` took {report['seconds']['total']:.0f} s.",
        "",
    ]
    for name in chosen:
        md += PARTS[name][1](report[name])
    RESULTS.mkdir(exist_ok=True)
    suffix = "" if names == [] else "-" + "-".join(chosen)
    (RESULTS / f"latest{suffix}.json").write_text(json.dumps(report, indent=2) + "\n")
    (RESULTS / f"latest{suffix}.md").write_text("\n".join(md))
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
