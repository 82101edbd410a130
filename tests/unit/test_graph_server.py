"""The fake WhatsApp Cloud API: sending, auth, checks, limits, failures, the log, the CLI."""

from __future__ import annotations

import base64
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

from localcloud.graph_server import GraphConfig, create_app

TOKEN = "local-access-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
PHONE_ID = "106540352242922"
URL = f"/v21.0/{PHONE_ID}/messages"


def text(to: str = "16505551234", body: str = "hello", **extra: Any) -> dict[str, Any]:
    return {
        "messaging_product": "whatsapp",
        "recipient_type": "individual",
        "to": to,
        "type": "text",
        "text": {"body": body, **extra},
    }


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def app_with(clock: FakeClock | None = None, **fields: Any) -> flask.Flask:
    if clock is None:
        return create_app(GraphConfig(**fields))
    return create_app(GraphConfig(**fields), clock=clock)


def send(client: Any, body: Any, url: str = URL, headers: dict[str, str] | None = None) -> Any:
    return client.post(url, json=body, headers=AUTH if headers is None else headers)


def stats(app: flask.Flask) -> dict[str, Any]:
    body: dict[str, Any] = app.test_client().get("/_sluice/stats").get_json()
    return body


def messages(app: flask.Flask, query: str = "") -> list[dict[str, Any]]:
    body: list[dict[str, Any]] = app.test_client().get(f"/_sluice/messages{query}").get_json()
    return body


def assert_graph_error(body: dict[str, Any], code: int, *, whatsapp: bool = True) -> None:
    """Meta's error format; `error_data` only on WhatsApp's own errors, not on Graph's (190)."""
    assert set(body) == {"error"}
    error = body["error"]
    expected = {"message", "type", "code", "fbtrace_id"} | ({"error_data"} if whatsapp else set())
    assert set(error) == expected
    assert error["code"] == code
    assert error["type"] == "OAuthException"
    assert isinstance(error["message"], str) and error["message"]
    if whatsapp:
        assert error["message"].startswith(f"(#{code}) ")
        assert error["error_data"]["messaging_product"] == "whatsapp"
        assert isinstance(error["error_data"]["details"], str) and error["error_data"]["details"]
    assert re.fullmatch(r"A[A-Za-z0-9_-]{22}", error["fbtrace_id"])


# --- sending -------------------------------------------------------------------------------------


def test_a_text_message_is_answered_like_meta_with_a_unique_wamid() -> None:
    app = app_with()
    client = app.test_client()
    r = send(client, text("16505551234", "hi there"))
    assert r.status_code == 200
    data = r.get_json()
    assert set(data) == {"messaging_product", "contacts", "messages"}
    assert data["messaging_product"] == "whatsapp"
    assert data["contacts"] == [{"input": "16505551234", "wa_id": "16505551234"}]
    [message] = data["messages"]
    assert message["id"].startswith("wamid.")
    # Shaped like Meta's: base64 that holds the recipient.
    assert b"16505551234" in base64.b64decode(message["id"].removeprefix("wamid."))

    ids = {send(client, text(body=f"reply {i}")).get_json()["messages"][0]["id"] for i in range(20)}
    assert len(ids) == 20 and message["id"] not in ids


@pytest.mark.parametrize("version", ["v21.0", "v17.0", "v100.1"])
def test_any_graph_version_is_served(version: str) -> None:
    client = app_with().test_client()
    assert send(client, text(), url=f"/{version}/{PHONE_ID}/messages").status_code == 200


@pytest.mark.parametrize("version", ["21.0", "v21", "latest"])
def test_a_path_without_a_graph_version_is_404_in_graph_format(version: str) -> None:
    r = send(app_with().test_client(), text(), url=f"/{version}/{PHONE_ID}/messages")
    assert r.status_code == 404
    assert r.get_json()["error"]["code"] == 100
    assert r.get_json()["error"]["fbtrace_id"].startswith("A")


@pytest.mark.parametrize(
    "body",
    [
        {"type": "image", "image": {"link": "https://example.com/cat.png", "caption": "a cat"}},
        {"type": "reaction", "reaction": {"message_id": "wamid.XYZ", "emoji": "\U0001f44d"}},
        {
            "type": "interactive",
            "interactive": {
                "type": "button",
                "body": {"text": "Pick one"},
                "action": {"buttons": [{"type": "reply", "reply": {"id": "a", "title": "A"}}]},
            },
        },
        {"type": "template", "template": {"name": "hello_world", "language": {"code": "en_US"}}},
    ],
)
def test_other_message_types_are_accepted_generically(body: dict[str, Any]) -> None:
    app = app_with()
    full = {"messaging_product": "whatsapp", "to": "447700900123", **body}
    assert send(app.test_client(), full).status_code == 200
    [logged] = messages(app)
    assert logged["type"] == body["type"]
    assert logged["body"] == full


def test_type_defaults_to_text_and_replies_may_carry_a_context() -> None:
    app = app_with()
    body = {
        "messaging_product": "whatsapp",
        "to": "16505551234",
        "context": {"message_id": "wamid.IN"},
        "text": {"body": "a reply", "preview_url": True},
    }
    assert send(app.test_client(), body).status_code == 200
    assert messages(app)[0]["type"] == "text"


def test_a_text_body_may_be_4096_characters_but_not_more() -> None:
    client = app_with().test_client()
    assert send(client, text(body="x" * 4096)).status_code == 200
    r = send(client, text(body="x" * 4097))
    assert r.status_code == 400
    assert_graph_error(r.get_json(), 100)
    assert "4096" in r.get_json()["error"]["error_data"]["details"]


# --- auth and invalid requests -------------------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer wrong-token"},
        {"Authorization": f"Basic {TOKEN}"},
        {"Authorization": TOKEN},
        {"Authorization": "Bearer "},
    ],
)
def test_a_missing_or_wrong_token_is_401_code_190(headers: dict[str, str]) -> None:
    app = app_with()
    r = send(app.test_client(), text(), headers=headers)
    assert r.status_code == 401
    assert_graph_error(r.get_json(), 190, whatsapp=False)
    assert r.get_json()["error"]["message"].startswith("Invalid OAuth access token")
    assert "invalid_token" in r.headers["WWW-Authenticate"]
    assert messages(app) == []
    assert stats(app)["by_error_code"] == {"190": 1}


def test_the_token_is_checked_before_the_body() -> None:
    r = send(app_with().test_client(), {"nonsense": True}, headers={})
    assert r.status_code == 401


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b"\xff\xfe",
        b"[1, 2]",
        {"to": "1", "type": "text", "text": {"body": "no product"}},
        {**text(), "messaging_product": "sms"},
        {**text(), "recipient_type": "crowd"},
        {k: v for k, v in text().items() if k != "to"},
        {**text(), "to": ""},
        {**text(), "to": 16505551234},
        {**text(), "type": 5},
        {**text(), "type": ""},
        {k: v for k, v in text().items() if k != "text"},
        {**text(), "text": "just a string"},
        {**text(), "type": "image"},  # no "image" object
        {**text(), "text": {}},
        {**text(), "text": {"body": ""}},
        {**text(), "text": {"body": 42}},
        text(preview_url="yes"),
    ],
)
def test_an_invalid_body_is_400_code_100_in_graph_format(body: Any) -> None:
    app = app_with()
    client = app.test_client()
    if isinstance(body, bytes):
        r = client.post(URL, data=body, content_type="application/json", headers=AUTH)
    else:
        r = send(client, body)
    assert r.status_code == 400
    assert_graph_error(r.get_json(), 100)
    assert r.get_json()["error"]["message"] == "(#100) Invalid parameter"
    assert messages(app) == []
    assert stats(app)["by_error_code"] == {"100": 1}


def test_each_error_has_its_own_fbtrace_id() -> None:
    client = app_with().test_client()
    ids = {send(client, {}).get_json()["error"]["fbtrace_id"] for _ in range(5)}
    assert len(ids) == 5


# --- rate limits ---------------------------------------------------------------------------------


def test_past_messages_per_second_a_phone_number_gets_130429_with_retry_after() -> None:
    clock = FakeClock()
    app = app_with(clock, messages_per_second=2)
    client = app.test_client()
    assert send(client, text("1")).status_code == 200
    clock.now += 0.5
    assert send(client, text("2")).status_code == 200

    r = send(client, text("3"))  # at 1000.5: two in the last second already
    assert r.status_code == 429
    assert_graph_error(r.get_json(), 130429)
    assert r.get_json()["error"]["message"] == "(#130429) Rate limit hit"
    assert r.headers["Retry-After"] == "1"

    # The limit is per phone number: another one of the business's numbers may still send.
    assert send(client, text("3"), url="/v21.0/999/messages").status_code == 200

    clock.now = 1001.0  # the first message has left the sliding window, the second has not
    assert send(client, text("4")).status_code == 200
    assert send(client, text("5")).status_code == 429

    s = stats(app)
    assert s["by_status"] == {"200": 4, "429": 2}
    assert s["by_error_code"] == {"130429": 2}
    assert s["accepted"] == 4
    assert [m["to"] for m in messages(app, f"?phone_number_id={PHONE_ID}")] == ["1", "2", "4"]


def test_the_same_recipient_within_the_pair_interval_gets_131056_another_does_not() -> None:
    clock = FakeClock()
    app = app_with(clock, pair_min_interval_s=6.0)
    client = app.test_client()
    assert send(client, text("111")).status_code == 200

    clock.now += 2
    r = send(client, text("111"))
    assert r.status_code == 429
    assert_graph_error(r.get_json(), 131056)
    assert "pair rate limit" in r.get_json()["error"]["message"]
    assert r.headers["Retry-After"] == "4"

    assert send(client, text("222")).status_code == 200  # another recipient
    assert send(client, text("111"), url="/v21.0/999/messages").status_code == 200  # other number

    clock.now += 3.5  # 5.5 s after the first: still too soon
    assert send(client, text("111")).status_code == 429
    clock.now += 0.5  # 6 s after the first
    assert send(client, text("111")).status_code == 200
    assert stats(app)["by_error_code"] == {"131056": 2}


def test_limits_can_be_switched_on_and_off_at_runtime() -> None:
    clock = FakeClock()
    client = app_with(clock).test_client()
    for _ in range(5):
        assert send(client, text("1")).status_code == 200
    client.post("/_sluice/config", json={"messages_per_second": 0})
    assert send(client, text("2")).get_json()["error"]["code"] == 130429
    client.post("/_sluice/config", json={"messages_per_second": None, "pair_min_interval_s": 10})
    assert send(client, text("3")).status_code == 200
    assert send(client, text("3")).get_json()["error"]["code"] == 131056


def test_max_per_second_is_the_peak_of_arrivals_per_phone_number() -> None:
    clock = FakeClock()
    app = app_with(clock, messages_per_second=1)
    client = app.test_client()
    for _ in range(3):  # three arrivals within a second: counted whatever their answer
        send(client, text("1"))
    send(client, text("1"), url="/v21.0/999/messages")
    clock.now += 1
    send(client, text("1"))
    assert stats(app)["max_per_second"] == {PHONE_ID: 3, "999": 1}


# --- failures and latency ------------------------------------------------------------------------


def test_failure_rate_one_answers_500_code_131000() -> None:
    app = app_with(failure_rate=1.0)
    for _ in range(3):
        r = send(app.test_client(), text())
        assert r.status_code == 500
        assert_graph_error(r.get_json(), 131000)
        assert r.get_json()["error"]["message"] == "(#131000) Something went wrong"
    assert messages(app) == []
    s = stats(app)
    assert s["by_status"] == {"500": 3}
    assert s["by_error_code"] == {"131000": 3}
    assert s["accepted"] == 0


def test_failures_are_reproducible_with_a_seed() -> None:
    def statuses() -> list[int]:
        client = app_with(failure_rate=0.5, seed=42).test_client()
        return [send(client, text(str(i))).status_code for i in range(30)]

    first = statuses()
    assert first == statuses()
    assert set(first) == {200, 500}


def test_latency_delays_each_call() -> None:
    client = app_with(latency_ms=60).test_client()
    start = time.monotonic()
    assert send(client, text()).status_code == 200
    assert time.monotonic() - start >= 0.06


def test_an_accepted_message_is_listed_before_its_delayed_answer_arrives() -> None:
    app = app_with(answer_delay_ms=2000)
    answered = threading.Event()

    def post() -> None:
        assert send(app.test_client(), text("late")).status_code == 200
        answered.set()

    sender = threading.Thread(target=post)
    sender.start()
    client = app.test_client()
    deadline = time.monotonic() + 5
    while not client.get("/_sluice/messages").get_json():
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert not answered.is_set()  # sent, and the sender does not know yet
    sender.join()
    assert answered.is_set()


# --- the log, counters, config -------------------------------------------------------------------


def test_sent_messages_are_listed_oldest_first_and_filtered() -> None:
    app = app_with()
    client = app.test_client()
    before = time.time()
    for i in range(4):
        send(client, text("111", f"to 111 #{i}"))
    send(client, text("222", "to 222"))
    send(client, text("111", "from another number"), url="/v21.0/999/messages")

    listed = messages(app)
    assert [m["body"]["text"]["body"] for m in listed] == [
        *(f"to 111 #{i}" for i in range(4)),
        "to 222",
        "from another number",
    ]
    first = listed[0]
    assert set(first) == {"id", "phone_number_id", "to", "type", "body", "at"}
    assert first["id"].startswith("wamid.")
    assert (first["phone_number_id"], first["to"], first["type"]) == (PHONE_ID, "111", "text")
    assert first["body"] == text("111", "to 111 #0")
    assert before <= first["at"] <= time.time()

    last_two = messages(app, "?limit=2&to=111")
    assert [m["body"]["text"]["body"] for m in last_two] == ["to 111 #3", "from another number"]
    from_main = messages(app, f"?to=111&phone_number_id={PHONE_ID}")
    assert len(from_main) == 4
    assert [m["to"] for m in messages(app, "?phone_number_id=999")] == ["111"]
    assert messages(app, "?to=nobody") == []
    assert messages(app, "?limit=0") == []
    r = client.get("/_sluice/messages?limit=-1")
    assert r.status_code == 400
    assert_graph_error(r.get_json(), 100)


def test_stats_count_requests_by_status_and_error_code() -> None:
    app = app_with()
    client = app.test_client()
    for i in range(3):
        send(client, text(str(i)))
    send(client, {})
    send(client, text(), headers={})
    assert stats(app) == {
        "requests": 5,
        "accepted": 3,
        "by_status": {"200": 3, "400": 1, "401": 1},
        "by_error_code": {"100": 1, "190": 1},
        "max_per_second": {PHONE_ID: 5},
    }


def test_reset_zeroes_counters_messages_and_limits_but_keeps_config() -> None:
    clock = FakeClock()
    app = app_with(clock, pair_min_interval_s=60.0, latency_ms=1)
    client = app.test_client()
    send(client, text("111"))
    assert send(client, text("111")).status_code == 429

    r = client.post("/_sluice/reset")
    assert r.status_code == 200
    empty = {
        "requests": 0,
        "accepted": 0,
        "by_status": {},
        "by_error_code": {},
        "max_per_second": {},
    }
    assert r.get_json() == empty
    assert stats(app) == empty
    assert messages(app) == []
    assert send(client, text("111")).status_code == 200  # the pair limit starts afresh
    config = client.get("/_sluice/config").get_json()
    assert config["pair_min_interval_s"] == 60.0 and config["latency_ms"] == 1


def test_config_is_read_and_partly_updated_at_runtime() -> None:
    client = app_with(latency_ms=5).test_client()
    assert client.get("/_sluice/config").get_json() == {
        "access_token": TOKEN,
        "messages_per_second": None,
        "pair_min_interval_s": None,
        "latency_ms": 5,
        "answer_delay_ms": 0,
        "failure_rate": 0,
        "seed": None,
    }
    r = client.post("/_sluice/config", json={"access_token": "rotated", "failure_rate": 1.0})
    assert r.status_code == 200
    assert r.get_json()["access_token"] == "rotated"
    assert client.get("/_sluice/config").get_json()["latency_ms"] == 5  # untouched
    assert send(client, text()).status_code == 401  # the old token is refused now
    r = send(client, text(), headers={"Authorization": "Bearer rotated"})
    assert r.get_json()["error"]["code"] == 131000


@pytest.mark.parametrize(
    "patch",
    [
        {"failure_rate": 1.5},
        {"latency_ms": -1},
        {"messages_per_second": "3"},
        {"messages_per_second": True},
        {"pair_min_interval_s": -0.1},
        {"access_token": ""},
        {"no_such_field": 1},
    ],
)
def test_invalid_config_is_refused_and_changes_nothing(patch: dict[str, Any]) -> None:
    client = app_with().test_client()
    before = client.get("/_sluice/config").get_json()
    r = client.post("/_sluice/config", json={"latency_ms": 1, **patch})
    assert r.status_code == 400
    assert_graph_error(r.get_json(), 100)
    assert client.get("/_sluice/config").get_json() == before


def test_config_must_be_a_json_object() -> None:
    r = app_with().test_client().post("/_sluice/config", data=b"[1]")
    assert r.status_code == 400


def test_healthz_and_index_page_show_the_replies_escaped() -> None:
    client = app_with().test_client()
    r = client.get("/healthz")
    assert r.status_code == 200 and r.get_data(as_text=True) == "ok"

    send(client, text("16505551234", "<b>shown escaped</b>"))
    send(client, {"messaging_product": "whatsapp", "to": "1", "type": "reaction",
                  "reaction": {"message_id": "wamid.X", "emoji": "<3"}})  # fmt: skip
    r = client.get("/")
    assert r.status_code == 200 and r.mimetype == "text/html"
    page = r.get_data(as_text=True)
    assert 'http-equiv="refresh"' in page
    assert "&lt;b&gt;shown escaped&lt;/b&gt;" in page
    assert "<b>shown escaped</b>" not in page
    assert "&lt;3" in page and "16505551234" in page
    assert page.index("reaction") < page.index("shown escaped")  # newest first


# --- the real server -----------------------------------------------------------------------------


@pytest.fixture
def server() -> Iterator[tuple[subprocess.Popen[str], str]]:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "localcloud.graph_server",
            "--port",
            "0",
            "--access-token",
            "cli-token",
            "--messages-per-second",
            "3",
            "--pair-min-interval-s",
            "30",
            "--latency-ms",
            "1",
            "--failure-rate",
            "0",
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


def test_main_serves_the_cli_config_and_stops_cleanly_on_sigterm(
    server: tuple[subprocess.Popen[str], str],
) -> None:
    proc, base = server
    with httpx.Client(base_url=base, timeout=10) as client:
        assert client.get("/healthz").text == "ok"
        config = client.get("/_sluice/config").json()
        assert config["access_token"] == "cli-token"
        assert config["messages_per_second"] == 3
        assert config["pair_min_interval_s"] == 30
        assert config["latency_ms"] == 1 and config["seed"] == 1

        auth = {"Authorization": "Bearer cli-token"}
        assert client.post(URL, json=text(), headers=AUTH).status_code == 401
        r = client.post(URL, json=text("111", "over the wire"), headers=auth)
        assert r.status_code == 200
        wamid = r.json()["messages"][0]["id"]
        assert client.post(URL, json=text("111"), headers=auth).json()["error"]["code"] == 131056

        [sent] = client.get("/_sluice/messages").json()
        assert sent["id"] == wamid and sent["body"]["text"]["body"] == "over the wire"

    proc.send_signal(signal.SIGTERM)
    assert proc.wait(5) == 0
