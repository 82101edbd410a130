"""GET /healthz's checks: in parallel, each under a deadline, the answer reused briefly."""

from __future__ import annotations

import threading

from sluice.handlers.health import HealthCheck


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_checks_run_in_parallel():
    # Each check waits for the other at a barrier: run one after the other, both would time out.
    barrier = threading.Barrier(2, timeout=5)
    check = HealthCheck(
        {"pubsub": barrier.wait, "firestore": barrier.wait}, timeout=10, cache_seconds=0
    )
    health = check()
    assert health.ok
    assert health.body() == {"status": "ok", "checks": {"pubsub": "ok", "firestore": "ok"}}


def test_a_failing_or_hanging_dependency_is_named_and_the_answer_is_unavailable():
    release = threading.Event()

    def refused() -> None:
        raise ConnectionRefusedError("connection refused")

    check = HealthCheck(
        {"pubsub": refused, "firestore": release.wait, "other": lambda: None},
        timeout=0.2,
        cache_seconds=0,
    )
    try:
        health = check()
    finally:
        release.set()
    assert not health.ok
    assert health.body()["status"] == "unavailable"
    assert health.checks["pubsub"] == "ConnectionRefusedError: connection refused"
    assert health.checks["firestore"] == "no answer within 0.2s"
    assert health.checks["other"] == "ok"


def test_the_answer_is_reused_for_the_cache_period_then_checked_again():
    clock, state = Clock(), {"up": False}

    def probe() -> None:
        if not state["up"]:
            raise RuntimeError("down")

    check = HealthCheck({"firestore": probe}, timeout=1, cache_seconds=5, clock=clock)
    assert not check().ok
    state["up"] = True
    clock.now = 4.9
    assert not check().ok  # still the answer from t=0
    clock.now = 5.0
    assert check().ok
