"""A local remote-job provider: the shape of the video vendors a pipeline step starts, then polls.

Such a vendor does not answer with the work: a create call answers at once with a task id, the task
runs at the vendor for tens of seconds, and the client asks for its status until it is final. This
server speaks the wire format of Runway's API, the common shape of them:

- `POST /v1/image_to_video` with `{"model", "promptImage", "promptText"?, "duration"?, "ratio"?}`
  answers `{"id": "<uuid>"}`;
- `GET /v1/tasks/{id}` answers `{"id", "status", "createdAt", ...}`: `RUNNING` (with `progress`)
  until the task's time is up, then `SUCCEEDED` with `output` (URLs of the result) or `FAILED`
  with `failure` and `failureCode`;
- `DELETE /v1/tasks/{id}` cancels a running task (`CANCELLED`), freeing its place;
- errors are `{"error": "<message>"}`.

Its limits are the vendor's: at most `max_running` tasks running at once (a create past it is a 429
with `Retry-After`, counting tasks from their creation until their final status, whether or not
anyone polls), and at most `rate_limit_per_minute` API calls (creates and polls) in any 60 s.
A task's outcome is drawn when it is created (`failure_rate`), its length from `job_seconds` and
`job_jitter_seconds`; tasks run on the server's clock, no thread each.

What it saw is counted, so tests and the bench can assert a client's behaviour: tasks created,
the most running at once, polls, the shortest interval between two polls of one task, 429s
(`GET /_sluice/stats`); the request log and the status page come from `local_server`.

Run it with `python -m localcloud.job_server --port 0 --job-seconds 30 --max-running 10`.
"""

from __future__ import annotations

import math
import random
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

import flask
from pydantic import Field

from localcloud.local_server import (
    BaseBehaviour,
    Call,
    Clock,
    Column,
    Counters,
    LocalServer,
    RuntimeConfig,
    ServeOptions,
    SlidingWindow,
    calls_log,
    from_env,
    json_object,
    json_response,
    local_app,
    pause,
)

WINDOW_S = 60.0
API_KEY_ENV = "SLUICE_JOB_PROVIDER_API_KEY"


class Behaviour(BaseBehaviour):
    """How the vendor behaves."""

    job_seconds: float = Field(default=1.0, ge=0, description="how long a task runs")
    job_jitter_seconds: float = Field(default=0.0, ge=0, description="plus or minus this much")
    failure_rate: float = Field(default=0.0, ge=0, le=1, description="fraction of tasks FAILED")
    latency_ms: float = Field(default=0.0, ge=0, description="sleep this long per API call")
    max_running: int | None = Field(
        default=None, ge=0, description="past this many tasks running, a create is a 429"
    )
    rate_limit_per_minute: int | None = Field(
        default=None, ge=0, description="past this many API calls in 60 s, answer 429"
    )


class Options(ServeOptions):
    """Fixed at start: not part of the behaviour, so that `/_sluice/config` never shows it."""

    api_key: str | None = Field(
        default=None,
        description="answer 401 to calls without this bearer key",
        json_schema_extra=from_env(API_KEY_ENV),
    )


class JobConfig(RuntimeConfig[Behaviour]):
    model = Behaviour

    def draw(self) -> tuple[Behaviour, tuple[float, bool]]:
        """The behaviour and a new task's (length in seconds, fails), drawn under the lock."""
        return self._draw(_choose)


def _choose(b: Behaviour, rng: random.Random) -> tuple[float, bool]:
    length = max(0.0, b.job_seconds + rng.uniform(-1.0, 1.0) * b.job_jitter_seconds)
    return length, rng.random() < b.failure_rate


class Status(StrEnum):
    RUNNING = "RUNNING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"


@dataclass
class Task:
    id: str
    created: float  # the server's clock
    created_at: str  # ISO time, as the vendor shows it
    ends: float
    fails: bool
    cancelled: bool = False
    last_poll: float | None = None

    def status(self, now: float) -> Status:
        if self.cancelled:
            return Status.CANCELLED
        if now < self.ends:
            return Status.RUNNING
        return Status.FAILED if self.fails else Status.SUCCEEDED


@dataclass
class _Call(Call):
    what: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {**super().as_dict(), "what": self.what}


class JobStats(Counters[_Call]):
    """What the vendor saw. The tasks themselves live here too, under the same lock, so that a
    create can check and take a running place in one step."""

    def __init__(self, clock: Clock = time.monotonic) -> None:
        self.tasks: dict[str, Task] = {}
        super().__init__(clock)

    def _zero(self) -> None:
        super()._zero()
        self._created = self._polls = self._rate_limited = 0
        self._max_running = self._running(self._clock())
        self._min_poll_interval: float | None = None
        self._calls = SlidingWindow(WINDOW_S)

    def _running(self, now: float) -> int:
        return sum(1 for t in self.tasks.values() if t.status(now) is Status.RUNNING)

    def _counted(self) -> dict[str, Any]:
        now = self._clock()
        return {
            "tasks_created": self._created,
            "running": self._running(now),
            "max_running": self._max_running,
            "polls": self._polls,
            "min_poll_interval_s": self._min_poll_interval,
            "rate_limited": self._rate_limited,
        }

    def arrive(self, what: str) -> _Call:
        with self._lock:
            call = _Call(generation=self._arrived(), at=time.time(), what=what)
            self._log.append(call)
            return call

    def finish(self, call: _Call, status: int) -> None:
        with self._lock:
            if self._end(call, status) and status == 429:
                self._rate_limited += 1

    def over_rate(self, limit: int | None) -> int | None:
        """Count an API call against the per-minute limit; the Retry-After if it is over."""
        with self._lock:
            now = self._clock()
            if limit is not None and self._calls.count(now) >= limit:
                return self._calls.retry_after(now)
            self._calls.add(now)
            return None

    def create(self, length: float, fails: bool, max_running: int | None) -> Task | int:
        """A new running task, or the seconds until a running place frees (max_running)."""
        with self._lock:
            now = self._clock()
            running = [t for t in self.tasks.values() if t.status(now) is Status.RUNNING]
            if max_running is not None and len(running) >= max_running:
                soonest = min((t.ends for t in running), default=now + 1)
                return max(1, math.ceil(soonest - now))
            task = Task(uuid.uuid4().hex, now, datetime.now(UTC).isoformat(), now + length, fails)
            self.tasks[task.id] = task
            self._created += 1
            self._max_running = max(self._max_running, len(running) + 1)
            return task

    def poll(self, task_id: str) -> tuple[Task, Status] | None:
        with self._lock:
            task = self.tasks.get(task_id)
            if task is None:
                return None
            now = self._clock()
            self._polls += 1
            if task.last_poll is not None:
                gap = now - task.last_poll
                least = self._min_poll_interval
                self._min_poll_interval = gap if least is None else min(least, gap)
            task.last_poll = now
            return task, task.status(now)

    def cancel(self, task_id: str) -> bool:
        with self._lock:
            task = self.tasks.get(task_id)
            if task is None:
                return False
            if task.status(self._clock()) is Status.RUNNING:
                task.cancelled = True
            return True


class InvalidRequest(ValueError):
    pass


def parse_create(raw: bytes) -> dict[str, Any]:
    body = json_object(raw, InvalidRequest, "The request body is not valid JSON.")
    for field in ("model", "promptImage"):
        if not isinstance(body.get(field), str) or not body[field]:
            raise InvalidRequest(f"'{field}' is required and must be a non-empty string.")
    if "promptText" in body and not isinstance(body["promptText"], str):
        raise InvalidRequest("'promptText' must be a string.")
    duration = body.get("duration", 5)
    if isinstance(duration, bool) or duration not in (5, 10):
        raise InvalidRequest("'duration' must be 5 or 10.")
    return body


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> flask.Response:
    return json_response({"error": message}, status, headers)


LOG = calls_log(Column("what", lambda c: str(c["what"]), css="text"))


def create_app(
    config: JobConfig | None = None,
    *,
    clock: Clock = time.monotonic,
    stopping: threading.Event | None = None,
    api_key: str | None = None,
    url: str = "",
) -> flask.Flask:
    """The vendor as a Flask app. `clock` (monotonic seconds) runs the tasks and the 60 s window,
    so a test can move time; `url` is where it serves, for the output URLs."""
    config = config if config is not None else JobConfig()
    stats = JobStats(clock)
    stop = stopping if stopping is not None else threading.Event()
    app = local_app(
        __name__,
        title="Sluice local remote-job provider",
        config=config,
        counters=stats,
        log=LOG,
        bad_request=lambda message: _error(400, message),
        http_error=lambda e: _error(e.code or 500, e.description or e.name),
    )

    def answered(what: str, answer: Any) -> flask.Response:
        """Count the call, check the key and the rate, then answer with `answer()`."""
        call = stats.arrive(what)
        response = _error(500, "Internal error.")
        try:
            if api_key and flask.request.headers.get("Authorization") != f"Bearer {api_key}":
                response = _error(401, "Invalid API key.")
                return response
            behaviour = config.get()
            retry = stats.over_rate(behaviour.rate_limit_per_minute)
            if retry is not None:
                message = (
                    f"Rate limit exceeded: {behaviour.rate_limit_per_minute} requests a minute."
                )
                response = _error(429, message, {"Retry-After": str(retry)})
                return response
            pause(stop, behaviour.latency_ms)
            response = answer()
            return response
        finally:
            stats.finish(call, response.status_code)

    @app.post("/v1/image_to_video")
    def create_task() -> flask.Response:
        def answer() -> flask.Response:
            try:
                parse_create(flask.request.get_data())
            except InvalidRequest as e:
                return _error(400, str(e))
            behaviour, (length, fails) = config.draw()
            task = stats.create(length, fails, behaviour.max_running)
            if isinstance(task, int):
                message = f"Too many tasks running: limit {behaviour.max_running}."
                return _error(429, message, {"Retry-After": str(task)})
            return json_response({"id": task.id})

        return answered("create", answer)

    @app.get("/v1/tasks/<task_id>")
    def get_task(task_id: str) -> flask.Response:
        def answer() -> flask.Response:
            polled = stats.poll(task_id)
            if polled is None:
                return _error(404, "Task not found.")
            task, status = polled
            body: dict[str, Any] = {"id": task.id, "status": status.value,
                                    "createdAt": task.created_at}  # fmt: skip
            if status is Status.RUNNING:
                length = task.ends - task.created
                done = (clock() - task.created) / length if length else 1.0
                body["progress"] = round(min(1.0, done), 2)
            elif status is Status.SUCCEEDED:
                body["output"] = [f"{url.rstrip('/')}/outputs/{task.id}.mp4"]
            elif status is Status.FAILED:
                body["failure"] = "The generation failed. Try a different input."
                body["failureCode"] = "INTERNAL.BAD_OUTPUT"
            return json_response(body)

        return answered(f"status {task_id}", answer)

    @app.delete("/v1/tasks/<task_id>")
    def delete_task(task_id: str) -> flask.Response:
        def answer() -> flask.Response:
            if not stats.cancel(task_id):
                return _error(404, "Task not found.")
            return flask.Response(status=204)

        return answered(f"cancel {task_id}", answer)

    @app.get("/outputs/<task_id>.mp4")
    def output(task_id: str) -> flask.Response:
        task = stats.tasks.get(task_id)
        if task is None or task.status(clock()) is not Status.SUCCEEDED:
            return _error(404, "Not found.")
        return flask.Response(b"\x00\x00\x00\x18ftypmp42" + task_id.encode(), mimetype="video/mp4")

    return app


SERVER = LocalServer(
    module="localcloud.job_server",
    description="A local remote-job (video) provider: create a task, then poll it.",
    config=JobConfig,
    options=Options,
    make_app=lambda config, options, stopping, url: create_app(
        config, stopping=stopping, api_key=options.api_key, url=url
    ),
)


if __name__ == "__main__":
    sys.exit(SERVER.main())
