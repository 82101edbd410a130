"""`GET /healthz`: can this function reach what it depends on?

Pub/Sub and Firestore are checked in parallel, each with a deadline, and the answer is kept for a
few seconds so that a load balancer or uptime check polling every instance does not turn into
load on both services.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass

Check = Callable[[], None]


@dataclass(frozen=True)
class Health:
    checks: dict[str, str]  # name -> "ok" or what went wrong

    @property
    def ok(self) -> bool:
        return all(v == "ok" for v in self.checks.values())

    def body(self) -> dict[str, object]:
        return {"status": "ok" if self.ok else "unavailable", "checks": self.checks}


class HealthCheck:
    def __init__(
        self,
        checks: dict[str, Check],
        *,
        timeout: float,
        cache_seconds: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._checks = checks
        self._timeout = timeout
        self._cache_seconds = cache_seconds
        self._clock = clock
        self._pool = ThreadPoolExecutor(max_workers=len(checks), thread_name_prefix="healthz")
        self._lock = threading.Lock()
        self._last: tuple[float, Health] | None = None

    def __call__(self) -> Health:
        with self._lock:
            if self._last is not None and self._clock() - self._last[0] < self._cache_seconds:
                return self._last[1]
            health = self._run()
            self._last = (self._clock(), health)
            return health

    def _run(self) -> Health:
        futures = {name: self._pool.submit(check) for name, check in self._checks.items()}
        deadline = self._clock() + self._timeout
        results = {}
        for name, future in futures.items():
            try:
                future.result(timeout=max(0.0, deadline - self._clock()))
                results[name] = "ok"
            except FutureTimeout:
                results[name] = f"no answer within {self._timeout:g}s"
            except Exception as exc:  # noqa: BLE001 - any failure of a probe is the answer itself
                results[name] = f"{type(exc).__name__}: {str(exc)[:200]}"
        return Health(results)
