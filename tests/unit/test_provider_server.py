"""The fake OpenAI-compatible provider: answers, failure modes, limits, counters, and the CLI."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import flask
import httpx
import pytest

from localcloud.provider_server import ProviderConfig, create_app

URL = "/v1/chat/completions"


def chat(content: Any, model: str = "gpt-test", system: str | None = None) -> dict[str, Any]:
    messages = [{"role": "system", "content": system}] if system else []
    messages.append({"role": "user", "content": content})
    return {"model": model, "messages": messages}


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def app_with(clock: FakeClock | None = None, **fields: Any) -> flask.Flask:
    if clock is None:
        return create_app(ProviderConfig(**fields))
    return create_app(ProviderConfig(**fields), clock=clock)


def stats(app: flask.Flask) -> dict[str, Any]:
    body: dict[str, Any] = app.test_client().get("/_sluice/stats").get_json()
    return body


def assert_openai_error(body: dict[str, Any], type_: str, code: str | None = None) -> None:
    assert set(body) == {"error"}
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert isinstance(error["message"], str) and error["message"]
    assert error["type"] == type_
    assert error["param"] is None
    assert error["code"] == code


# --- answers -------------------------------------------------------------------------------------


def test_answers_a_chat_completion_echoing_the_last_user_message() -> None:
    client = app_with().test_client()
    body = {
        "model": "gpt-test",
        "messages": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": "first question"},
            {"role": "assistant", "content": "first answer"},
            {"role": "user", "content": "second question"},
        ],
    }
    r = client.post(URL, json=body)
    assert r.status_code == 200
    data = r.get_json()
    assert data["id"].startswith("chatcmpl-")
    assert data["object"] == "chat.completion"
    assert isinstance(data["created"], int) and abs(data["created"] - time.time()) < 10
    assert data["model"] == "gpt-test"
    [choice] = data["choices"]
    assert choice["index"] == 0
    assert choice["finish_reason"] == "stop"
    assert choice["message"]["role"] == "assistant"
    assert choice["message"]["content"] == "echo: second question"
    usage = data["usage"]
    assert usage["prompt_tokens"] > 0 and usage["completion_tokens"] > 0
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


def test_each_item_gets_its_own_answer_and_id() -> None:
    client = app_with().test_client()
    answers = [client.post(URL, json=chat(f"item {i}")).get_json() for i in range(5)]
    assert [a["choices"][0]["message"]["content"] for a in answers] == [
        f"echo: item {i}" for i in range(5)
    ]
    assert len({a["id"] for a in answers}) == 5


def test_echo_is_truncated_to_200_chars_and_reads_content_parts() -> None:
    client = app_with().test_client()
    long = "x" * 500
    r = client.post(URL, json=chat(long))
    assert r.get_json()["choices"][0]["message"]["content"] == "echo: " + "x" * 200
    parts = [{"type": "text", "text": "hello "}, {"type": "text", "text": "parts"}]
    r = client.post(URL, json=chat(parts))
    assert r.get_json()["choices"][0]["message"]["content"] == "echo: hello parts"


@pytest.mark.parametrize(
    "raw",
    [
        b"not json",
        b"[1, 2]",
        b'{"messages": [{"role": "user", "content": "hi"}]}',
        b'{"model": "m"}',
        b'{"model": "m", "messages": []}',
        b'{"model": "m", "messages": [{"content": "no role"}]}',
        b'{"model": "m", "messages": [{"role": "user", "content": 5}]}',
        b"\xff\xfe",
    ],
)
def test_invalid_body_is_400_in_openai_format(raw: bytes) -> None:
    app = app_with()
    r = app.test_client().post(URL, data=raw, content_type="application/json")
    assert r.status_code == 400
    assert_openai_error(r.get_json(), "invalid_request_error")
    assert stats(app)["by_status"] == {"400": 1}


def test_unknown_route_is_404_in_openai_format() -> None:
    r = app_with().test_client().get("/v1/nope")
    assert r.status_code == 404
    assert_openai_error(r.get_json(), "invalid_request_error")


def test_with_an_api_key_a_call_without_it_is_401_and_not_counted() -> None:
    app = create_app(ProviderConfig(), api_key="sk-right")
    client = app.test_client()
    for headers in ({}, {"Authorization": "Bearer sk-wrong"}):
        r = client.post("/v1/chat/completions", json=chat("hello"), headers=headers)
        assert r.status_code == 401
        assert_openai_error(r.get_json(), "invalid_request_error", "invalid_api_key")
    ok = client.post("/v1/chat/completions", json=chat("hello"),
                     headers={"Authorization": "Bearer sk-right"})  # fmt: skip
    assert ok.status_code == 200
    assert stats(app)["requests"] == 1


# --- failure modes -------------------------------------------------------------------------------


def test_failure_rate_one_answers_500_server_error() -> None:
    app = app_with(failure_rate=1.0)
    for _ in range(3):
        r = app.test_client().post(URL, json=chat("hi"))
        assert r.status_code == 500
        assert_openai_error(r.get_json(), "server_error")
    assert stats(app)["by_status"] == {"500": 3}


def test_failure_rate_is_reproducible_with_a_seed() -> None:
    def statuses() -> list[int]:
        client = app_with(failure_rate=0.5, seed=42).test_client()
        return [client.post(URL, json=chat(str(i))).status_code for i in range(30)]

    first = statuses()
    assert first == statuses()
    assert set(first) == {200, 500}  # about half and half, not all one kind


def test_setting_the_seed_at_runtime_restarts_the_sequence() -> None:
    client = app_with(failure_rate=0.5).test_client()
    client.post("/_sluice/config", json={"seed": 7})
    first = [client.post(URL, json=chat("x")).status_code for _ in range(20)]
    client.post("/_sluice/config", json={"seed": 7})
    assert [client.post(URL, json=chat("x")).status_code for _ in range(20)] == first


def test_permanent_failure_marker_answers_400_only_for_marked_items() -> None:
    client = app_with(permanent_failure_marker="POISON").test_client()
    r = client.post(URL, json=chat("this item is POISON here"))
    assert r.status_code == 400
    assert_openai_error(r.get_json(), "invalid_request_error")
    # Permanent: the same item fails again; other items are fine.
    assert client.post(URL, json=chat("this item is POISON here")).status_code == 400
    assert client.post(URL, json=chat("a healthy item")).status_code == 200


def test_latency_delays_each_call() -> None:
    client = app_with(latency_ms=60).test_client()
    start = time.monotonic()
    assert client.post(URL, json=chat("slow")).status_code == 200
    assert time.monotonic() - start >= 0.06


def test_timeout_rate_one_hangs_for_timeout_sleep_s() -> None:
    client = app_with(timeout_rate=1.0, timeout_sleep_s=0.2).test_client()
    start = time.monotonic()
    assert client.post(URL, json=chat("hang")).status_code == 200
    assert time.monotonic() - start >= 0.2


# --- limits --------------------------------------------------------------------------------------


def test_rate_limit_answers_429_with_retry_after_past_the_limit() -> None:
    clock = FakeClock()
    app = app_with(clock, rate_limit_per_minute=3)
    client = app.test_client()
    for i in range(3):
        assert client.post(URL, json=chat(f"ok {i}")).status_code == 200
        clock.now += 10  # calls at 1000, 1010, 1020

    r = client.post(URL, json=chat("one too many"))  # at 1030: the window is full
    assert r.status_code == 429
    assert_openai_error(r.get_json(), "rate_limit_error", "rate_limit_exceeded")
    # The oldest accepted call (1000) leaves the window at 1060: 30 s from now.
    assert r.headers["Retry-After"] == "30"

    clock.now = 1060.5  # the sliding window has moved past the first call only
    assert client.post(URL, json=chat("again")).status_code == 200
    assert client.post(URL, json=chat("full again")).status_code == 429

    s = stats(app)
    assert s["rate_limited"] == 2
    assert s["by_status"] == {"200": 4, "429": 2}
    assert s["requests"] == 6


def test_max_per_minute_counts_all_arrivals_in_a_sliding_window() -> None:
    clock = FakeClock()
    app = app_with(clock, rate_limit_per_minute=2)
    client = app.test_client()
    for _ in range(4):  # 4 arrivals within the same second: 2 accepted, 2 rate limited
        client.post(URL, json=chat("x"))
    clock.now += 61
    client.post(URL, json=chat("x"))  # a new window holding just this one
    s = stats(app)
    assert s["max_per_minute"] == 4
    assert s["rate_limited"] == 2

    clock.now += 30
    for _ in range(2):
        client.post(URL, json=chat("x"))
    assert stats(app)["max_per_minute"] == 4  # 3 in the last window: the peak stays


def test_max_concurrent_answers_429_to_calls_past_the_limit() -> None:
    app = app_with(latency_ms=400, max_concurrent=2)
    statuses: list[int] = []
    lock = threading.Lock()
    barrier = threading.Barrier(5)

    def call(i: int) -> None:
        client = app.test_client()
        barrier.wait()
        r = client.post(URL, json=chat(f"c{i}"))
        if r.status_code == 429:
            assert r.headers["Retry-After"].isdigit()
            assert_openai_error(r.get_json(), "rate_limit_error", "rate_limit_exceeded")
        with lock:
            statuses.append(r.status_code)

    threads = [threading.Thread(target=call, args=(i,)) for i in range(5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)

    assert sorted(statuses) == [200, 200, 429, 429, 429]
    s = stats(app)
    assert s["max_in_flight"] == 2
    assert s["in_flight"] == 0
    assert s["rate_limited"] == 3


# --- config, counters, log -----------------------------------------------------------------------


def test_config_is_read_and_partly_updated_at_runtime() -> None:
    client = app_with(latency_ms=5).test_client()
    config = client.get("/_sluice/config").get_json()
    assert config["latency_ms"] == 5
    assert config["timeout_sleep_s"] == 60
    assert config["rate_limit_per_minute"] is None

    r = client.post("/_sluice/config", json={"failure_rate": 1.0, "rate_limit_per_minute": 10})
    assert r.status_code == 200
    config = client.get("/_sluice/config").get_json()
    assert config["failure_rate"] == 1.0
    assert config["rate_limit_per_minute"] == 10
    assert config["latency_ms"] == 5  # untouched
    assert client.post(URL, json=chat("x")).status_code == 500


@pytest.mark.parametrize(
    "patch",
    [{"failure_rate": 1.5}, {"latency_ms": -1}, {"no_such_field": 1}, {"max_concurrent": "3"}],
)
def test_invalid_config_is_refused_and_changes_nothing(patch: dict[str, Any]) -> None:
    client = app_with().test_client()
    before = client.get("/_sluice/config").get_json()
    r = client.post("/_sluice/config", json={"latency_ms": 1, **patch})
    assert r.status_code == 400
    assert_openai_error(r.get_json(), "invalid_request_error")
    assert client.get("/_sluice/config").get_json() == before


def test_stats_count_requests_by_status() -> None:
    app = app_with(permanent_failure_marker="BAD")
    client = app.test_client()
    for i in range(3):
        client.post(URL, json=chat(f"good {i}"))
    client.post(URL, json=chat("BAD one"))
    client.post(URL, data=b"{", content_type="application/json")
    assert stats(app) == {
        "requests": 5,
        "by_status": {"200": 3, "400": 2},
        "in_flight": 0,
        "max_in_flight": 1,
        "rate_limited": 0,
        "max_per_minute": 5,
    }


def test_requests_log_lists_the_last_calls_oldest_first() -> None:
    client = app_with(failure_rate=0.0).test_client()
    for i in range(5):
        client.post(URL, json=chat(f"item {i}"))
    client.post(URL, json=chat("y" * 300))

    log = client.get("/_sluice/requests?limit=3").get_json()
    assert [e["content"] for e in log] == ["item 3", "item 4", "y" * 200]
    for entry in log:
        assert entry["status"] == 200
        assert entry["ended"] >= entry["at"] > time.time() - 60
    assert len(client.get("/_sluice/requests").get_json()) == 6
    assert client.get("/_sluice/requests?limit=0").get_json() == []
    assert client.get("/_sluice/requests?limit=-1").status_code == 400


def test_reset_zeroes_counters_and_log_but_keeps_config() -> None:
    app = app_with(rate_limit_per_minute=1, latency_ms=1)
    client = app.test_client()
    client.post(URL, json=chat("a"))
    client.post(URL, json=chat("b"))  # 429
    assert stats(app)["requests"] == 2

    r = client.post("/_sluice/reset")
    assert r.status_code == 200
    assert stats(app) == {
        "requests": 0,
        "by_status": {},
        "in_flight": 0,
        "max_in_flight": 0,
        "rate_limited": 0,
        "max_per_minute": 0,
    }
    assert client.get("/_sluice/requests").get_json() == []
    config = client.get("/_sluice/config").get_json()
    assert config["rate_limit_per_minute"] == 1 and config["latency_ms"] == 1


def test_healthz_and_index_page() -> None:
    client = app_with().test_client()
    r = client.get("/healthz")
    assert r.status_code == 200 and r.get_data(as_text=True) == "ok"

    client.post(URL, json=chat("<b>shown escaped</b>"))
    r = client.get("/")
    assert r.status_code == 200 and r.mimetype == "text/html"
    page = r.get_data(as_text=True)
    assert "max_in_flight" in page
    assert "&lt;b&gt;shown escaped&lt;/b&gt;" in page
    assert "<b>shown escaped</b>" not in page


# --- the real server -----------------------------------------------------------------------------


@pytest.fixture
def server() -> Iterator[tuple[subprocess.Popen[str], str]]:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "localcloud.provider_server",
            "--port",
            "0",
            "--latency-ms",
            "500",
            "--seed",
            "1",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()  # blocks until bound, or "" if it died
        match = re.fullmatch(r"listening on (http://127\.0\.0\.1:(\d+))\n", line)
        assert match, f"unexpected first line: {line!r}"
        assert int(match.group(2)) > 0
        yield proc, match.group(1)
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def test_main_serves_concurrent_calls_and_stops_cleanly_on_sigterm(
    server: tuple[subprocess.Popen[str], str],
) -> None:
    proc, base = server
    assert httpx.get(f"{base}/healthz").text == "ok"

    n = 8
    barrier = threading.Barrier(n)
    answers: dict[int, str] = {}
    lock = threading.Lock()

    def call(i: int) -> None:
        with httpx.Client(base_url=base, timeout=10) as client:
            barrier.wait()
            r = client.post(URL, json=chat(f"item {i}"))
            r.raise_for_status()
            with lock:
                answers[i] = r.json()["choices"][0]["message"]["content"]

    threads = [threading.Thread(target=call, args=(i,)) for i in range(n)]
    start = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    elapsed = time.monotonic() - start

    assert answers == {i: f"echo: item {i}" for i in range(n)}
    s = httpx.get(f"{base}/_sluice/stats").json()
    assert s["requests"] == n
    assert s["by_status"] == {"200": n}
    assert s["in_flight"] == 0
    # Served side by side, not one after another (which would take n * 0.5 s).
    assert s["max_in_flight"] >= n // 2
    assert elapsed < n * 0.5
    assert s["max_per_minute"] == n

    proc.send_signal(signal.SIGTERM)
    assert proc.wait(5) == 0
