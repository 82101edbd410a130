"""A fork server: the local cloud's Python processes forked from one that has imported their code.

Every function process imports Google's clients, gRPC, Flask, functions-framework and gunicorn
before it serves: about 2 CPU-seconds each, and a test deploys five functions and three local
servers for every scenario, and starts them again each time one is killed. The zygote imports all
of that once; each process is then a fork of it, ready in milliseconds.

A child is what `python -m MODULE ARGS...` started with that environment would be: its own session
(stopped by signalling its group), exactly the environment it is given, its output appended to its
log, the working directory it is given. What it runs is unchanged; only the imports it would have
repeated are already done. The zygote never starts a thread or a client (a fork copies only the
thread that forks, and gRPC may not be initialised before it), and it reaps its children so that
their exit codes can be asked for.

The protocol is one JSON line each way on the zygote's stdin and stdout: `{"spawn": {...}}` answers
`{"pid": N}`, `{"poll": N}` answers `{"returncode": N or null}`.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import runpy
import subprocess
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any

# What the functions and the local servers import before serving, heaviest first.
PRELOAD = (
    "google.cloud.firestore",
    "google.cloud.pubsub_v1",
    "googleapiclient.discovery",
    "google.events.cloud.firestore",
    "cloudevents.http",
    "functions_framework",
    "functions_framework._http.gunicorn",
    "gunicorn.workers.gthread",
    "flask",
    "httpx",
    "pydantic",
    "yaml",
    "sluice.bootstrap",
    "localcloud.local_server",
)


class Forked:
    """A child of the zygote, with the part of `subprocess.Popen` the local cloud uses."""

    def __init__(self, zygote: Zygote, pid: int) -> None:
        self._zygote = zygote
        self.pid = pid
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            self.returncode = self._zygote.returncode(self.pid)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while (code := self.poll()) is None:
            if deadline is not None and time.monotonic() > deadline:
                raise subprocess.TimeoutExpired(f"pid {self.pid}", timeout or 0)
            time.sleep(0.02)
        return code


class Zygote:
    def __init__(self, log_path: Path) -> None:
        self._log_path = log_path
        self._proc: subprocess.Popen[bytes] | None = None
        self._lock = threading.Lock()

    def start(self) -> None:
        self._log_path.parent.mkdir(parents=True, exist_ok=True)
        with self._log_path.open("ab") as log:
            self._proc = subprocess.Popen(
                [sys.executable, "-u", "-m", "localcloud.zygote"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=log,
                start_new_session=True,
            )
        ready = self._ask({"ready": True})
        if not ready.get("ready"):
            raise RuntimeError(f"the zygote did not start; see {self._log_path}")

    def _ask(self, request: dict[str, Any]) -> dict[str, Any]:
        proc = self._proc
        if proc is None or proc.stdin is None or proc.stdout is None:
            raise RuntimeError("the zygote is not running")
        with self._lock:
            proc.stdin.write(json.dumps(request).encode() + b"\n")
            proc.stdin.flush()
            line = proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the zygote exited; see {self._log_path}")
        answer: dict[str, Any] = json.loads(line)
        return answer

    def spawn(
        self, module: str, args: list[str], *, log_path: Path, env: dict[str, str],
        cwd: Path | None = None,
    ) -> Forked:  # fmt: skip
        """`python -m module args` with exactly `env`, in its own session, output to `log_path`,
        in `cwd` (default: this process's)."""
        log_path.parent.mkdir(parents=True, exist_ok=True)
        request = {"module": module, "args": args, "log": str(log_path), "env": env,
                   "cwd": str(cwd or os.getcwd())}  # fmt: skip
        return Forked(self, int(self._ask({"spawn": request})["pid"]))

    def returncode(self, pid: int) -> int | None:
        code = self._ask({"poll": pid}).get("returncode")
        return None if code is None else int(code)

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        with contextlib.suppress(OSError):
            if proc.stdin is not None:
                proc.stdin.close()  # its loop ends at end of input
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


# -- the zygote itself -----------------------------------------------------------------------------


def _child(request: dict[str, Any], log: int) -> None:
    """In the forked child: become `python -m module args`, and never return to the loop. Its
    stdin and stdout (the zygote's channel) become /dev/null and `log`."""
    code = 1
    try:
        os.setsid()
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.dup2(log, 1)
        os.dup2(log, 2)
        os.close(null)
        os.close(log)
        sys.stdin = open(os.devnull)  # noqa: SIM115 - the child's stdin for its whole life
        os.environ.clear()
        os.environ.update(request["env"])
        os.chdir(request["cwd"])
        sys.path[0] = request["cwd"]
        sys.argv = [request["module"], *request["args"]]
        runpy.run_module(request["module"], run_name="__main__", alter_sys=True)
        code = 0
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
    except BaseException:  # noqa: BLE001 - as Python would: print it, exit 1, never return
        traceback.print_exc()
    finally:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)


def _reap(exits: dict[int, int]) -> None:
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        exits[pid] = os.waitstatus_to_exitcode(status)


def serve() -> None:
    for name in PRELOAD:
        importlib.import_module(name)
    # A fork copies only the thread that forks: the zygote must have no other.
    if threading.active_count() != 1:
        raise RuntimeError(f"the zygote has {threading.active_count()} threads after preloading")
    requests, answers = sys.stdin.buffer, sys.stdout.buffer
    exits: dict[int, int] = {}
    for line in requests:
        request = json.loads(line)
        _reap(exits)
        answer: dict[str, Any]
        if "spawn" in request:
            # Opened before the fork, as Popen does: the log exists once the pid is known.
            log = os.open(request["spawn"]["log"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            pid = os.fork()
            if pid == 0:
                _child(request["spawn"], log)
            os.close(log)
            # A pid is reused once the kernel wraps around: an earlier child's exit is not this
            # one's.
            exits.pop(pid, None)
            answer = {"pid": pid}
        elif "poll" in request:
            answer = {"returncode": exits.get(int(request["poll"]))}
        else:
            answer = {"ready": True}
        answers.write(json.dumps(answer).encode() + b"\n")
        answers.flush()


if __name__ == "__main__":
    serve()
