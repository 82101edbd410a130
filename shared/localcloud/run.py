"""`make run`: the local cloud with a demo tenant and a demo batch, until Ctrl-C.

Environment (all optional):
  SLUICE_DEMO_ITEMS      items in the demo chat batch (300)
  SLUICE_DEMO_PHOTOS     photos in the demo staging batch (6): three image-model calls and a
                         video job each
  SLUICE_PROVIDER_LATENCY_MS  the local AI provider's and image model's latency per call (50)
  SLUICE_VIDEO_JOB_SECONDS    how long a job runs at the local video vendor (3)
  SLUICE_PORTS           fixed ports, e.g. "webhook-ingest=8081,status-api=8082,pubsub=8085,
                         firestore=8086,router=8087,provider=8090"; unset ones are free ports
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path
from types import FrameType
from typing import Any

import httpx
from google.cloud import firestore

from localcloud.cloud import Deployment, LocalCloud, write_local_json
from sluice.adapters.tenants_store import TenantStore
from sluice.domain.whatsapp import sign

STATE_DIR = Path(".sluice")
PROJECT = "sluice-local"


def ports_from_env(raw: str) -> dict[str, int]:
    ports = {}
    for pair in filter(None, (p.strip() for p in raw.split(","))):
        name, _, port = pair.partition("=")
        if not port.isdigit():
            raise SystemExit(f"SLUICE_PORTS: {pair!r} is not name=port")
        ports[name.strip()] = int(port)
    return ports


def progress_bar(status: dict[str, Any], width: int = 40) -> str:
    done = int(width * status["progress"])
    counts = status["counts"]
    return (
        f"[{'#' * done}{'.' * (width - done)}] {status['finished']}/{status['total']}"
        f"  succeeded {counts['succeeded']}  failed {counts['failed']}"
        f"  running {counts['running']}  queued {counts['queued']}"
    )


def chat_demo(items: int) -> dict[str, Any]:
    return {
        "kind": "chat",
        "params": {"instructions": "Describe the image in one sentence."},
        "items": [{"id": f"img-{n:04d}", "input": {"url": f"https://example.com/{n}.jpg"}}
                  for n in range(items)],
    }  # fmt: skip


def staging_demo(photos: int) -> dict[str, Any]:
    rooms = ("living room", "kitchen", "bedroom", "study")
    return {
        "kind": "staging",
        "params": {"style": "Scandinavian"},
        "items": [{"id": f"photo-{n:03d}",
                   "input": {"image_url": f"https://example.com/listing/{n}.jpg",
                             "room": rooms[n % len(rooms)]}}
                  for n in range(photos)],
    }  # fmt: skip


def submit_demo(d: Deployment, key: str, body: dict[str, Any]) -> dict[str, Any]:
    r = httpx.post(
        d.url("webhook-ingest") + "/v1/batches",
        json=body,
        headers={"Authorization": f"Bearer {key}", "Idempotency-Key": f"demo-{body['kind']}"},
        timeout=60,
    )
    r.raise_for_status()
    return dict(r.json())


def follow(status_url: str, key: str) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {key}"}
    while True:
        status = httpx.get(status_url, headers=headers, timeout=10).json()
        print("\r" + progress_bar(status), end="", flush=True)
        if status["state"] != "open":
            print()
            return dict(status)
        time.sleep(0.25)


def sample_whatsapp_delivery(d: Deployment) -> Path:
    """A signed WhatsApp webhook body, as Meta sends it, saved for the printed curl."""
    body = {
        "object": "whatsapp_business_account",
        "entry": [{"id": "102290129340398", "changes": [{"field": "messages", "value": {
            "messaging_product": "whatsapp",
            "metadata": {"display_phone_number": d.whatsapp["display_phone_number"],
                         "phone_number_id": d.whatsapp["phone_number_id"]},
            "contacts": [{"profile": {"name": "Kerry"}, "wa_id": "16315551181"}],
            "messages": [{"from": "16315551181", "id": f"wamid.sample{int(time.time())}",
                          "timestamp": str(int(time.time())), "type": "text",
                          "text": {"body": "Hi! What are your opening hours?"}}],
        }}]}],
    }  # fmt: skip
    path = STATE_DIR / "sample-whatsapp-delivery.json"
    path.write_text(json.dumps(body))
    return path


def usage(d: Deployment, key: str, batch: dict[str, Any], staging: dict[str, Any]) -> str:
    ingest, status = d.url("webhook-ingest"), d.url("status-api")
    auth = f'-H "Authorization: Bearer {key}"'
    sample = sample_whatsapp_delivery(d)
    signature = sign(sample.read_bytes(), d.whatsapp["app_secret"])
    token = d.whatsapp["verify_token"]
    return f"""
Sluice is running on the local cloud (project {d.project}).

  webhook-ingest  {ingest}
  status-api      {status}
  AI provider     {d.provider_url}  (open it to see what it received; counters: /_sluice/stats)
  image model     {d.provider_server_url("image-model")}  (the staging pipeline's three steps)
  video vendor    {d.provider_server_url("video-vendor")}  (its remote jobs: /_sluice/stats)
  Google Sheets   {d.sheets_url}  (local Sheets API; a spreadsheet as a workbook: see below)
  Pub/Sub         {d.cloud.emulators.pubsub_host}  (emulator)
  Firestore       {d.cloud.emulators.firestore_host}  (emulator)
  logs            {d.dir}
  demo API key    {key}
  all of this     {STATE_DIR / "local.json"}

Try:
  curl -s {auth} {batch["status_url"]}
  curl -s {auth} "{batch["status_url"]}/items?state=succeeded&page_size=3"
  curl -s {auth} "{staging["status_url"]}/items?page_size=1"   (a staged photo, step by step)
  curl -s -X POST {auth} -H 'Content-Type: application/json' {ingest}/v1/batches \\
       -d '{{"kind": "chat","items":[{{"input":"hello"}},{{"input":"world"}}]}}'
  .venv/bin/sluice tenant list

Google Sheets export of the demo batch (the demo tenant has it enabled):
  curl -s -X POST {auth} {batch["status_url"]}/sheets
  curl -s {auth} {batch["status_url"]}/sheets     (backfill state and rows written)
  then open the workbook: {d.sheets_url}/_sluice/spreadsheets/SPREADSHEET_ID.xlsx

WhatsApp (phone number id {d.whatsapp["phone_number_id"]} routes to the demo tenant):
  curl -s "{ingest}/whatsapp/webhook?hub.mode=subscribe&hub.challenge=42&hub.verify_token={token}"
  curl -s -X POST {ingest}/whatsapp/webhook -H 'Content-Type: application/json' \\
       -H "X-Hub-Signature-256: {signature}" --data-binary @{sample}
  then see the reply Sluice sent: {d.graph_url}/  (JSON: {d.graph_url}/_sluice/messages)

Ctrl-C stops everything.
"""


def main() -> int:
    def interrupt(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)
    ports = ports_from_env(os.environ.get("SLUICE_PORTS", ""))
    items = int(os.environ.get("SLUICE_DEMO_ITEMS", "300"))
    photos = int(os.environ.get("SLUICE_DEMO_PHOTOS", "6"))
    latency = os.environ.get("SLUICE_PROVIDER_LATENCY_MS", "50")
    job_seconds = os.environ.get("SLUICE_VIDEO_JOB_SECONDS", "3")
    cloud = LocalCloud(
        STATE_DIR / "logs",
        pubsub_port=ports.get("pubsub", 0),
        firestore_port=ports.get("firestore", 0),
        router_port=ports.get("router", 0),
    )
    local_json = STATE_DIR / "local.json"
    deployment: Deployment | None = None
    try:
        print("starting the Pub/Sub and Firestore emulators ...", flush=True)
        cloud.start()
        print("deploying the functions ...", flush=True)
        deployment = cloud.deploy(
            PROJECT, ports=ports, provider_args=["--latency-ms", latency],
            provider_server_args={
                "image-model": ["--latency-ms", latency],
                "video-vendor": ["--job-seconds", job_seconds, "--job-jitter-seconds", "1"],
            },
        )  # fmt: skip
        tenants = TenantStore(firestore.Client(project=PROJECT))
        demo = tenants.create("demo", sheets=True)
        tenants.add_phone("demo", deployment.whatsapp["phone_number_id"])
        tenant = {"id": demo.id, "api_key": demo.api_key, "signing_secret": demo.signing_secret}
        write_local_json(local_json, {**deployment.describe(), "demo_tenant": tenant})
        print(f"submitting a demo chat batch of {items} items ...", flush=True)
        batch = submit_demo(deployment, demo.api_key, chat_demo(items))
        final = follow(batch["status_url"], demo.api_key)
        print(f"demo batch {final['batch_id']} {final['state']}", flush=True)
        print(f"submitting a demo staging batch of {photos} photos (image model, then video "
              "jobs) ...", flush=True)  # fmt: skip
        staging = submit_demo(deployment, demo.api_key, staging_demo(photos))
        final = follow(staging["status_url"], demo.api_key)
        print(f"demo staging batch {final['batch_id']} {final['state']}", flush=True)
        print(usage(deployment, demo.api_key, batch, staging), flush=True)
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        print("\nstopping ...", flush=True)
    finally:
        if deployment is not None:
            deployment.stop()
        cloud.stop()
        local_json.unlink(missing_ok=True)
        print("stopped", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
