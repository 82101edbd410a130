"""Child processes of the local cloud: each in its own process group, always stopped whole.

The emulators' launchers start a Java child that outlives its parent when only the parent is
signalled, so every child here gets its own session and is stopped by signalling its group.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import httpx

if TYPE_CHECKING:
    from localcloud.zygote import Zygote


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Process(Protocol):
    """A child process as the local cloud handles it: a `subprocess.Popen`, or a zygote's child."""

    pid: int
    returncode: int | None

    def poll(self) -> int | None: ...

    def wait(self, timeout: float | None = None) -> int: ...


def child_env(env: dict[str, str] | None, withhold: tuple[str, ...] = ()) -> dict[str, str]:
    """This process's environment without the variables whose names start with one of
    `withhold`, and `env`."""
    inherited = {k: v for k, v in os.environ.items() if not k.startswith(withhold)}
    return {**inherited, **(env or {})}


def spawn(
    argv: Sequence[str],
    *,
    log_path: Path,
    env: dict[str, str] | None = None,
    withhold: tuple[str, ...] = (),
) -> subprocess.Popen[bytes]:
    """Start `argv` in its own session, output to `log_path`, with this process's environment
    (without the variables whose names start with one of `withhold`) and `env`."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log:
        return subprocess.Popen(
            list(argv),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=child_env(env, withhold),
            start_new_session=True,
        )


def spawn_module(
    module: str,
    args: Sequence[str],
    *,
    log_path: Path,
    env: dict[str, str] | None = None,
    withhold: tuple[str, ...] = (),
    zygote: Zygote | None = None,
) -> Process:
    """`python -m module args`, as `spawn` starts it: forked from `zygote` when given (the same
    program, its imports already done), else a fresh interpreter."""
    if zygote is None:
        return spawn([sys.executable, "-m", module, *args], log_path=log_path, env=env,
                     withhold=withhold)  # fmt: skip
    return zygote.spawn(module, list(args), log_path=log_path, env=child_env(env, withhold))


def stop(proc: Process, *, grace: float = 5.0, sig: signal.Signals = signal.SIGTERM) -> None:
    """Signal the whole group, then SIGKILL what is left after the grace period."""
    for signum, wait in ((sig, grace), (signal.SIGKILL, 5.0)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signum)
        try:
            proc.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            continue
        # The group may outlive its leader (the Java child of a launcher): finish it too.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        return


def wait_until(ready: Callable[[], bool], *, timeout: float, what: str, proc: Process) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode} while starting")
        if ready():
            return
        time.sleep(0.1)
    raise TimeoutError(f"{what} was not ready after {timeout} s")


def listening_port(log_path: Path, *, offset: int, timeout: float, what: str, proc: Process) -> int:
    """The port a server bound, from the `listening on http://HOST:PORT` line it prints once
    bound (read from its log past `offset`, where this run's output begins)."""
    found: list[int] = []

    def printed() -> bool:
        with log_path.open("rb") as log:
            log.seek(offset)
            match = LISTENING.search(log.read())
        if match:
            found.append(int(match[1]))
        return bool(match)

    wait_until(printed, timeout=timeout, what=what, proc=proc)
    return found[0]


LISTENING = re.compile(rb"listening on http://\S+:(\d+)")


def http_ok(url: str, *, any_answer: bool = False) -> Callable[[], bool]:
    """Ready once it answers below 500, or at all with `any_answer`."""

    def check() -> bool:
        try:
            status = httpx.get(url, timeout=1.0).status_code
        except httpx.HTTPError:
            return False
        return any_answer or status < 500

    return check


class QuietHTTPServer(ThreadingHTTPServer):
    """A threaded server that does not print a traceback when a client hangs up: the emulators
    drop connections as a matter of course."""

    daemon_threads = True

    def handle_error(self, request: object, client_address: object) -> None:
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)  # type: ignore[arg-type]


class BackgroundServer:
    """A loopback HTTP server of the local cloud's own, served from a daemon thread."""

    def __init__(self, handler: type[BaseHTTPRequestHandler], *, port: int = 0) -> None:
        self.port = port or free_port()
        self._server = QuietHTTPServer(("127.0.0.1", self.port), handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
