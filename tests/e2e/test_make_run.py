"""`make run` (its script): up, demo batch done, usable, and nothing left after Ctrl-C."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

pytestmark = pytest.mark.cloud


def listening(url: str) -> bool:
    try:
        httpx.get(url, timeout=1)
    except httpx.TransportError:
        return False
    return True


def test_make_run_serves_the_demo_and_stops_everything_on_ctrl_c(tmp_path: Path):
    env = {**os.environ, "SLUICE_DEMO_ITEMS": "20", "SLUICE_PROVIDER_LATENCY_MS": "5",
           "SLUICE_DEMO_PHOTOS": "2", "SLUICE_VIDEO_JOB_SECONDS": "1"}  # fmt: skip
    for var in ("PUBSUB_EMULATOR_HOST", "FIRESTORE_EMULATOR_HOST"):
        env.pop(var, None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "localcloud.run"],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    output: list[str] = []
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            output.append(line)
            if "Ctrl-C stops everything" in line:
                break
        text = "".join(output)
        assert "Ctrl-C stops everything" in text, text
        assert "20/20" in text and "completed" in text
        # The staging pipeline ran too: two photos through the image model and a video job each.
        assert "2/2  succeeded 2" in text, text

        local_json = tmp_path / ".sluice" / "local.json"
        assert stat.S_IMODE(local_json.stat().st_mode) == 0o600  # it holds the secrets
        info = json.loads(local_json.read_text())
        key = info["demo_tenant"]["api_key"]
        status_api = info["functions"]["status-api"]
        r = httpx.post(
            info["functions"]["webhook-ingest"] + "/v1/batches",
            json={"kind": "chat", "items": [{"input": "hi"}]},
            headers={"Authorization": f"Bearer {key}"},
        )
        assert r.status_code == 202
        assert r.json()["status_url"].startswith(status_api)
        assert httpx.get(info["servers"]["ai_provider"] + "/_sluice/stats").json()["requests"] >= 20
        video = httpx.get(info["servers"]["provider:video-vendor"] + "/_sluice/stats").json()
        assert video["tasks_created"] == 2
        # The printed WhatsApp curl works as printed: the signed sample gets its reply.
        curl = next(line for line in output if "X-Hub-Signature-256" in line)
        signature = curl.split("X-Hub-Signature-256: ")[1].split('"')[0]
        sample = curl.split("--data-binary @")[1].strip()
        r = httpx.post(
            info["functions"]["webhook-ingest"] + "/whatsapp/webhook",
            content=(tmp_path / sample).read_bytes(),
            headers={"X-Hub-Signature-256": signature, "Content-Type": "application/json"},
        )
        assert r.status_code == 200
        graph = info["servers"]["whatsapp_graph"] + "/_sluice/messages"
        deadline = time.monotonic() + 30
        while not httpx.get(graph).json():
            assert time.monotonic() < deadline, "no WhatsApp reply was sent"
            time.sleep(0.2)
        urls = [*info["functions"].values(), *info["servers"].values(), info["trigger_router"]]
        urls += [f"http://{host}" for host in info["emulators"].values()]
        assert all(listening(url) for url in urls)
    finally:
        proc.send_signal(signal.SIGINT)
        rest, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, rest
    assert not (tmp_path / ".sluice" / "local.json").exists()
    assert [url for url in urls if listening(url)] == []
