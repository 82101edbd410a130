"""Each function as its own functions-framework process, restarted when it dies.

`local_instances` from the topology becomes gunicorn workers behind one port (functions-framework's
WORKERS), as Cloud Run puts instances behind one URL; `concurrency` becomes THREADS. When the
process dies the supervisor starts it again on the same port, as Cloud Run starts a new instance.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from pathlib import Path

from localcloud.frontend import Frontend
from localcloud.processes import Process, free_port, http_ok, spawn_module, stop
from localcloud.zygote import Zygote
from sluice.topology import Function

log = logging.getLogger(__name__)

# An instance that exits this often while starting is broken, not unlucky with its port.
MAX_START_RESTARTS = 3

# Locally, more threads than this only make two cores thrash.
MAX_LOCAL_THREADS = 16

# A function's settings are only those it is given, as in the cloud: none leak in from the
# environment of whoever started the local cloud.
WITHHELD = ("SLUICE_",)


class FunctionProcess:
    def __init__(
        self,
        name: str,
        function: Function,
        *,
        source: Path,
        env: dict[str, str],
        log_dir: Path,
        port: int = 0,
        zygote: Zygote | None = None,
    ) -> None:
        """`zygote`: fork each instance from it (see localcloud.zygote) instead of starting a
        fresh interpreter, which is what a cold start measures."""
        self.name = name
        self.zygote = zygote
        self.function = function
        self.source = source
        # The process listens on a private port; callers use the front end's stable URL.
        self.port = free_port()
        self.frontend = Frontend(self.port, port=port)
        self.env = {
            **env,
            "WORKERS": str(function.local_instances),
            "THREADS": str(min(function.limits.concurrency, MAX_LOCAL_THREADS)),
            "K_SERVICE": name,
            "FUNCTION_TARGET": function.entry_point,
            "PYTHONUNBUFFERED": "1",
        }
        self.log_path = log_dir / f"{name}.log"
        self.restarts = 0
        self._proc: Process | None = None
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._watcher = threading.Thread(target=self._watch, daemon=True, name=f"watch-{name}")

    @property
    def url(self) -> str:
        return self.frontend.url

    @property
    def serves_at_once(self) -> int:
        """Requests its instances serve at once (instances x threads): what Cloud Run would take
        of a push subscription's messages in flight."""
        return self.function.local_instances * int(self.env["THREADS"])

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def _spawn(self) -> Process:
        args = [
            "--target", self.function.entry_point,
            "--source", str(self.source),
            "--signature-type", self.function.signature_type,
            "--host", "127.0.0.1",
            "--port", str(self.port),
        ]  # fmt: skip
        return spawn_module("functions_framework", args, log_path=self.log_path, env=self.env,
                            withhold=WITHHELD, zygote=self.zygote)  # fmt: skip

    def start(self) -> None:
        self.frontend.start()
        with self._lock:
            self._proc = self._spawn()
        self._watcher.start()

    def wait_ready(self, timeout: float = 60) -> None:
        """Until an instance serves. One that exits while starting (its private port was taken
        between choosing and binding it) is started again by the watcher, on a new port."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                proc, port = self._proc, self.port
            # Any HTTP answer (even 4xx for a GET on an event function) means it is serving.
            serving = http_ok(f"http://127.0.0.1:{port}/", any_answer=True)
            if proc is not None and proc.poll() is None and serving():
                return
            if self.restarts > MAX_START_RESTARTS:
                raise RuntimeError(f"{self.name} keeps exiting while starting; see {self.log_path}")
            time.sleep(0.1)
        raise TimeoutError(f"{self.name} did not start within {timeout:.0f}s; see {self.log_path}")

    def _watch(self) -> None:
        while not self._stopping.wait(0.2):
            with self._lock:
                proc = self._proc
                if proc is None or proc.poll() is None or self._stopping.is_set():
                    continue
                log.warning("%s exited with %s; starting it again", self.name, proc.returncode)
                stop(proc, grace=0)  # reap whatever is left of its group
                self.restarts += 1
                # A fresh private port: the old one may be what made it exit (taken by another
                # process between free_port() and the bind). Callers keep the front end's URL.
                self.port = free_port()
                self.frontend.backend = f"http://127.0.0.1:{self.port}"
                self._proc = self._spawn()

    def worker_pids(self) -> list[int]:
        """The gunicorn workers (the instances) under this process."""
        if self._proc is None:
            return []
        children = Path(f"/proc/{self._proc.pid}/task/{self._proc.pid}/children")
        try:
            return [int(p) for p in children.read_text().split()]
        except OSError:
            return []

    def stop(self) -> None:
        self._stopping.set()
        with self._lock:
            if self._proc is not None:
                # SIGINT is gunicorn's quick shutdown; SIGTERM would drain for 30 s.
                stop(self._proc, grace=3.0, sig=signal.SIGINT)
        if self._watcher.is_alive():
            self._watcher.join(timeout=5)
        self.frontend.stop()

    def serve(self) -> FunctionProcess:
        """Start and wait until it serves; stopped again if it never does."""
        self.start()
        try:
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self
