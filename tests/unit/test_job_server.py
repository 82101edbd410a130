"""The local remote-job provider: tasks created, polled to a final status, its running-tasks and
per-minute limits answered with 429s, what it counts, and the command line."""

from __future__ import annotations

import re
import subprocess
import sys
from typing import Any

import flask
import httpx
import pytest

from localcloud.job_server import JobConfig, create_app

CREATE = "/v1/image_to_video"
BODY = {"model": "gen4_turbo", "promptImage": "https://example.com/room.jpg", "duration": 5}


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def vendor(clock: FakeClock, **fields: Any) -> flask.Flask:
    return create_app(JobConfig(**fields), clock=clock, url="http://vendor.test")


def stats(app: flask.Flask) -> dict[str, Any]:
    body: dict[str, Any] = app.test_client().get("/_sluice/stats").get_json()
    return body


def test_a_task_runs_then_succeeds_with_its_output():
    clock = FakeClock()
    app = vendor(clock, job_seconds=30)
    client = app.test_client()

    created = client.post(CREATE, json=BODY)
    assert created.status_code == 200
    task = created.get_json()["id"]
    clock.now += 15
    running = client.get(f"/v1/tasks/{task}").get_json()
    assert running["status"] == "RUNNING" and running["progress"] == 0.5
    clock.now += 15
    done = client.get(f"/v1/tasks/{task}").get_json()
    assert done["status"] == "SUCCEEDED"
    assert done["output"] == [f"http://vendor.test/outputs/{task}.mp4"]
    assert client.get(f"/outputs/{task}.mp4").mimetype == "video/mp4"
    counted = stats(app)
    assert counted["requests"] == 3 and counted["by_status"] == {"200": 3}
    assert counted["polls"] == 2 and counted["min_poll_interval_s"] == 15


def test_a_failing_task_says_why():
    clock = FakeClock()
    client = vendor(clock, job_seconds=1, failure_rate=1.0).test_client()
    task = client.post(CREATE, json=BODY).get_json()["id"]
    clock.now += 1
    failed = client.get(f"/v1/tasks/{task}").get_json()
    assert failed["status"] == "FAILED" and failed["failure"] and failed["failureCode"]
    assert "output" not in failed


def test_past_the_running_limit_a_create_is_a_429_until_a_task_ends():
    clock = FakeClock()
    app = vendor(clock, job_seconds=10, max_running=2)
    client = app.test_client()
    first = client.post(CREATE, json=BODY).get_json()["id"]
    clock.now += 4
    client.post(CREATE, json=BODY)

    refused = client.post(CREATE, json=BODY)
    assert refused.status_code == 429
    assert refused.headers["Retry-After"] == "6"  # when the first ends
    assert "limit 2" in refused.get_json()["error"]
    # The first task ends whether or not anyone polls it, and frees its place.
    clock.now += 6
    assert client.post(CREATE, json=BODY).status_code == 200
    assert client.get(f"/v1/tasks/{first}").get_json()["status"] == "SUCCEEDED"
    s = stats(app)
    assert s["max_running"] == 2 and s["tasks_created"] == 3 and s["rate_limited"] == 1


def test_a_cancelled_task_frees_its_place():
    clock = FakeClock()
    client = vendor(clock, job_seconds=10, max_running=1).test_client()
    task = client.post(CREATE, json=BODY).get_json()["id"]
    assert client.delete(f"/v1/tasks/{task}").status_code == 204
    assert client.get(f"/v1/tasks/{task}").get_json()["status"] == "CANCELLED"
    assert client.post(CREATE, json=BODY).status_code == 200


def test_api_calls_past_the_rate_limit_are_429s_with_retry_after():
    clock = FakeClock()
    app = vendor(clock, job_seconds=100, rate_limit_per_minute=2)
    client = app.test_client()
    task = client.post(CREATE, json=BODY).get_json()["id"]
    clock.now += 20
    assert client.get(f"/v1/tasks/{task}").status_code == 200
    refused = client.get(f"/v1/tasks/{task}")
    assert refused.status_code == 429 and refused.headers["Retry-After"] == "40"
    clock.now += 40
    assert client.get(f"/v1/tasks/{task}").status_code == 200


@pytest.mark.parametrize(
    ("body", "says"),
    [
        ({"promptImage": "https://x/a.jpg"}, "'model' is required"),
        ({"model": "gen4_turbo"}, "'promptImage' is required"),
        ({**BODY, "duration": 7}, "'duration' must be 5 or 10"),
        ({**BODY, "promptText": 3}, "'promptText' must be a string"),
    ],
)
def test_a_bad_create_is_a_400_and_starts_nothing(body, says):
    clock = FakeClock()
    app = vendor(clock)
    answer = app.test_client().post(CREATE, json=body)
    assert answer.status_code == 400 and says in answer.get_json()["error"]
    assert stats(app)["tasks_created"] == 0


def test_an_unknown_task_is_a_404_and_a_wrong_key_a_401():
    app = create_app(JobConfig(), api_key="secret")
    client = app.test_client()
    assert client.post(CREATE, json=BODY).status_code == 401
    auth = {"Authorization": "Bearer secret"}
    assert client.get("/v1/tasks/nope", headers=auth).status_code == 404
    assert client.post(CREATE, json=BODY, headers=auth).status_code == 200


def test_the_command_serves_the_vendor_with_its_flags():
    proc = subprocess.Popen(
        [sys.executable, "-m", "localcloud.job_server", "--port", "0", "--max-running", "1",
         "--job-seconds", "60"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        match = re.fullmatch(r"listening on (http://127\.0\.0\.1:\d+)\n", proc.stdout.readline())
        assert match
        base = match.group(1)
        task = httpx.post(base + CREATE, json=BODY).json()["id"]
        assert httpx.post(base + CREATE, json=BODY).status_code == 429
        status = httpx.get(f"{base}/v1/tasks/{task}").json()
        assert status["status"] == "RUNNING"
    finally:
        proc.terminate()
        assert proc.wait(5) == 0
