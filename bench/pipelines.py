"""The shipped pipelines, measured: a 1,000-item staging batch against its bottleneck provider's
bound, and a WhatsApp reply's latency with its three model calls.

Staging: three steps on the image model, then a remote video job, with the example's limits
(topology.yaml: the image model 60 a minute and 10 at once, the video vendor 10 jobs running)
and its latencies (10 s a vision call, 30 s a generation, minutes a video job), all on a clock
sped up 60 times so that the batch fits the bench's time: a minute of theirs is a second here,
so the image model takes 3,600 calls a minute. The bound is the issue's: for each provider p,
max(the sliding window's minutes for its calls, calls x latency ÷ concurrency), at the share of
its limits bulk work may use (a fifth is kept for WhatsApp replies), the largest over providers.
A video job's latency is its run at the vendor; Sluice sees its end at its next poll, at most
`poll_seconds` later, which the bound does not count.

WhatsApp: messages posted one at a time, each timed from the webhook's POST to the reply's
arrival at the local Graph API, with the provider's request log showing whether the intent and
draft calls overlapped.
"""

from __future__ import annotations

import time
import uuid
from collections import defaultdict
from typing import Any

import httpx
from google.cloud import firestore

from bench.report import percentile, table
from localcloud.cloud import Deployment, LocalCloud
from sluice.adapters.tenants_store import TenantStore
from sluice.domain import limits
from sluice.topology import Topology, load_topology
from testkit.client import bearer, submit, webhook
from testkit.whatsapp_payloads import change, delivery, signed, text_message

ITEMS = 1000
SPEED = 60  # their minute is our second
# A vision call's 10 s; the local server has one latency, so a generation (30 s) is one too.
IMAGE_MS = 10_000 // SPEED
JOB_SECONDS = 60 / SPEED  # a video job: a minute of theirs
REPLIES = 20
REPLY_MS = 200  # each of a reply's model calls


def scaled(shipped: Topology) -> dict[str, Any]:
    """The example's limits on the sped-up clock."""
    image = shipped.providers["image-model"]
    video = shipped.providers["video-vendor"]
    return {
        "providers": {
            "image-model": {"requests_per_minute": image.requests_per_minute * SPEED},
            "video-vendor": {"requests_per_minute": video.requests_per_minute * SPEED},
        },
        "kinds": {"staging": {"steps": {"video": {"job": {"poll_seconds": 1}}}}},
        "subscriptions": {"job-polls-to-processor": {
            "retry": {"minimum_backoff_seconds": 1, "maximum_backoff_seconds": 1}}},
    }  # fmt: skip


def bulk_share(per_minute: int, concurrent: int, shards: int) -> tuple[int, int]:
    shares = limits.shard_shares(concurrent, per_minute, shards, 1.0)
    bulk = limits.usable_shards(shares, interactive=False)
    return sum(bulk.values()), sum(shares[i][0] for i in bulk)


def bound(calls: int, latency_s: float, per_minute: int, concurrent: int, shards: int) -> float:
    rate, slots = bulk_share(per_minute, concurrent, shards)
    window = 60.0 * ((calls - 1) // rate) if calls else 0.0
    return max(window, calls * latency_s / slots)


def staging(cloud: LocalCloud) -> dict[str, Any]:
    shipped = load_topology()
    overrides = scaled(shipped)
    image_limits = shipped.providers["image-model"]
    video_limits = shipped.providers["video-vendor"]
    d = cloud.deploy(
        "bench-pipelines-staging", topology_overrides=overrides,
        provider_server_args={
            "image-model": ["--latency-ms", str(IMAGE_MS), "--max-concurrent",
                            str(image_limits.max_concurrent), "--rate-limit-per-minute",
                            str(image_limits.requests_per_minute * SPEED)],
            "video-vendor": ["--job-seconds", str(JOB_SECONDS), "--max-running",
                             str(video_limits.max_concurrent), "--rate-limit-per-minute",
                             str(video_limits.requests_per_minute * SPEED)],
        },
    )  # fmt: skip
    try:
        key = TenantStore(firestore.Client(project=d.project)).create("bench").api_key
        photos = [{"image_url": f"https://crm.example/p/{n}.jpg", "room": f"room {n}"}
                  for n in range(ITEMS)]  # fmt: skip
        with httpx.Client(timeout=60) as http:
            accepted = submit(http, d, key, kind="staging", inputs=photos,
                              params={"style": "Scandinavian"})  # fmt: skip
            started = time.monotonic()
            url = accepted["status_url"]
            while (status := http.get(url, headers=bearer(key)).json())["state"] != "completed":
                time.sleep(0.5)
            makespan = time.monotonic() - started
            image = http.get(d.provider_server_url("image-model") + "/_sluice/stats").json()
            log = http.get(d.provider_server_url("image-model") + "/_sluice/requests",
                           params={"limit": 10_000}).json()  # fmt: skip
            video = http.get(d.provider_server_url("video-vendor") + "/_sluice/stats").json()
    finally:
        d.stop()
    shards = d.topology.work.rate_shards
    image_calls = sum(v for k, v in image["by_status"].items() if k != "429")
    per_step: dict[str, int] = defaultdict(int)
    for call in log:
        if call["status"] == 200:
            text = call["content"]
            step = ("stage" if text.startswith("Stage ") else
                    "verify" if text.startswith("Is this") else "layout")  # fmt: skip
            per_step[step] += 1
    per_step["video"] = video["tasks_created"]
    bounds = {
        "image-model": bound(image_calls, IMAGE_MS / 1000, image_limits.requests_per_minute * SPEED,
                             image_limits.max_concurrent, shards),
        "video-vendor": bound(video["tasks_created"], JOB_SECONDS,
                              shipped.job_start_rate("video-vendor") * SPEED,
                              video_limits.max_concurrent, shards),
    }  # fmt: skip
    bottleneck = max(bounds, key=lambda p: bounds[p])
    return {
        "items": ITEMS,
        "succeeded": status["counts"]["succeeded"],
        "failed": status["counts"]["failed"],
        "makespan_s": round(makespan, 1),
        "bounds_s": {p: round(b, 1) for p, b in bounds.items()},
        "bottleneck": bottleneck,
        "makespan_over_bound": round(makespan / bounds[bottleneck], 2),
        "image_429s": image["by_status"].get("429", 0),
        "video_429s": video["rate_limited"],
        "image_max_in_flight": image["max_in_flight"],
        "video_max_running": video["max_running"],
        "calls_per_item": {step: round(n / ITEMS, 3) for step, n in sorted(per_step.items())},
    }


def whatsapp(cloud: LocalCloud) -> dict[str, Any]:
    d = cloud.deploy("bench-pipelines-whatsapp", provider_args=["--latency-ms", str(REPLY_MS)])
    try:
        TenantStore(firestore.Client(project=d.project)).create("shop")
        TenantStore(firestore.Client(project=d.project)).add_phone(
            "shop", d.whatsapp["phone_number_id"]
        )
        latencies, overlapped = [], 0
        with httpx.Client(timeout=60) as http:
            for n in range(REPLIES):
                question = f"question {n} {uuid.uuid4().hex[:6]}"
                message = text_message(f"1555{n:04d}", question)
                payload = delivery(change(d.whatsapp["phone_number_id"], messages=[message]))
                body, headers = signed(payload, d.whatsapp["app_secret"])
                posted = time.time()
                http.post(webhook(d), content=body, headers=headers).raise_for_status()
                reply = wait_reply(http, d, f"1555{n:04d}")
                latencies.append((reply["at"] - posted) * 1000)
                calls = [c for c in http.get(d.provider_url + "/_sluice/requests",
                                             params={"limit": 200}).json()
                         if question in c["content"] and c["status"] == 200]  # fmt: skip
                intent = next(c for c in calls if c["content"].startswith("What does"))
                draft = min((c for c in calls if c["content"] == question), key=lambda c: c["at"])
                if intent["at"] < draft["ended"] and draft["at"] < intent["ended"]:
                    overlapped += 1
    finally:
        d.stop()
    return {
        "replies": REPLIES,
        "model_call_ms": REPLY_MS,
        "p50_ms": round(percentile(latencies, 0.5)),
        "p99_ms": round(percentile(latencies, 0.99)),
        "overlapped": overlapped,
    }


def wait_reply(http: httpx.Client, d: Deployment, to: str) -> dict[str, Any]:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        sent = [m for m in http.get(d.graph_url + "/_sluice/messages").json() if m["to"] == to]
        if sent:
            return dict(sent[0])
        time.sleep(0.02)
    raise RuntimeError(f"no reply to {to}")


def run(cloud: LocalCloud) -> dict[str, Any]:
    return {"staging": staging(cloud), "whatsapp": whatsapp(cloud)}


def markdown(result: dict[str, Any]) -> list[str]:
    s, w = result["staging"], result["whatsapp"]
    calls = ", ".join(f"{step} {n}" for step, n in s["calls_per_item"].items())
    return [
        f"## Pipelines: the staging kind, {s['items']:,} photos; a WhatsApp reply",
        "",
        "Staging: three steps on the image model, then a video job, with the example's limits "
        "and latencies on a clock sped up 60 times (bench/pipelines.py). Bound: for each "
        "provider, max(the sliding window's minutes for its calls, calls x latency ÷ "
        "concurrency) at the bulk share of its limits; the largest is the bottleneck "
        "(goal: makespan ≤ 1.15x its bound, zero 429s, one call per item and step).",
        "",
        *table(
            [
                ">makespan s",
                "bottleneck",
                ">bounds s",
                ">makespan ÷ bound",
                ">429s (image, video)",
                ">max in flight / running",
                ">succeeded / failed",
                "calls per item and step",
            ],
            [
                (
                    s["makespan_s"],
                    s["bottleneck"],
                    ", ".join(f"{p} {b}" for p, b in s["bounds_s"].items()),
                    f"**{s['makespan_over_bound']}x**",
                    f"{s['image_429s']}, {s['video_429s']}",
                    f"{s['image_max_in_flight']} / {s['video_max_running']}",
                    f"{s['succeeded']} / {s['failed']}",
                    calls,
                )
            ],
        ),
        "",
        f"WhatsApp reply (intent and draft at once, compose, send; {w['model_call_ms']} ms a "
        f"model call), webhook POST to the reply at the Graph API, {w['replies']} messages one "
        f"at a time: p50 **{w['p50_ms']} ms**, p99 {w['p99_ms']} ms; intent and draft "
        f"overlapped at the provider for {w['overlapped']} of {w['replies']}.",
        "",
    ]
