"""The base of the local servers: the command line is built from the behaviour model, and every
server (the provider, the Graph API, the Sheets API) has the same counters, log, page and flags."""

from __future__ import annotations

import re
import subprocess
import sys
from typing import Any

import flask
import httpx
import pytest

from localcloud import graph_server, provider_server, sheets_server
from localcloud.local_server import LocalServer
from sluice.adapters.sheets_api import SheetsAPI

SERVERS: list[LocalServer[Any, Any]] = [
    provider_server.SERVER,
    graph_server.SERVER,
    sheets_server.SERVER,
]
ids = [s.name for s in SERVERS]


def flags(server: LocalServer[Any, Any]) -> set[str]:
    return {o for a in server.parser()._actions for o in a.option_strings if o.startswith("--")}


@pytest.mark.parametrize("server", SERVERS, ids=ids)
def test_every_behaviour_field_is_a_flag_and_every_server_takes_the_same_start_up_flags(
    server: LocalServer[Any, Any],
) -> None:
    fields = {"--" + name.replace("_", "-") for name in server.config.model.model_fields}
    assert fields | {"--host", "--port", "--log-requests", "--seed"} <= flags(server)


@pytest.mark.parametrize("server", SERVERS, ids=ids)
def test_without_flags_the_behaviour_is_the_models_default(
    server: LocalServer[Any, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(graph_server.ACCESS_TOKEN_ENV, raising=False)
    args = vars(server.parser().parse_args([]))
    fields = {k: args[k] for k in server.config.model.model_fields}
    assert server.config(**fields).as_dict() == server.config().as_dict()
    assert (args["host"], args["port"], args["log_requests"]) == ("127.0.0.1", 0, False)


def test_flags_are_typed_as_their_fields_and_none_clears_an_optional_one() -> None:
    parser = sheets_server.SERVER.parser()
    args = parser.parse_args(["--write-requests-per-minute", "none", "--throttle-rate", "0.5",
                              "--seed", "3", "--latency-ms", "7"])  # fmt: skip
    assert args.write_requests_per_minute is None
    assert args.throttle_rate == 0.5 and args.seed == 3 and args.latency_ms == 7.0
    with pytest.raises(SystemExit):
        parser.parse_args(["--seed", "three"])
    with pytest.raises(SystemExit):
        parser.parse_args(["--throttle-rate", "none"])  # not optional


def test_a_secret_defaults_to_its_environment_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(provider_server.API_KEY_ENV, "sk-from-env")
    monkeypatch.setenv(graph_server.ACCESS_TOKEN_ENV, "token-from-env")
    assert provider_server.SERVER.parser().parse_args([]).api_key == "sk-from-env"
    assert graph_server.SERVER.parser().parse_args([]).access_token == "token-from-env"
    assert graph_server.SERVER.parser().parse_args(["--access-token", "t"]).access_token == "t"
    # The help names the variable, never its value.
    assert "token-from-env" not in graph_server.SERVER.parser().format_help()


def test_a_bad_value_is_refused_at_start_with_the_fields_rule() -> None:
    run = subprocess.run(
        [sys.executable, "-m", "localcloud.sheets_server", "--throttle-rate", "1.5"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert run.returncode == 2
    assert "throttle_rate" in run.stderr and "less than or equal to 1" in run.stderr


def sheets_app() -> flask.Flask:
    return sheets_server.create_app(
        sheets_server.SheetsConfig(write_requests_per_minute=None), base_url="http://local"
    )


def test_the_sheets_server_counts_logs_and_shows_its_calls_as_the_others_do() -> None:
    client = sheets_app().test_client()
    made = client.post("/v4/spreadsheets", json={"properties": {"title": "<t>"}}).get_json()
    sid = made["spreadsheetId"]
    assert client.get(f"/v4/spreadsheets/{sid}").status_code == 200
    assert client.get("/v4/spreadsheets/nope").status_code == 404
    stats = client.get("/_sluice/stats").get_json()
    assert stats["requests"] == 3 and stats["by_status"] == {"200": 2, "404": 1}
    assert stats["spreadsheets"] == 1 and stats["write_requests"] == 1

    log = client.get("/_sluice/requests").get_json()
    assert [(e["request"], e["status"]) for e in log] == [
        ("POST /v4/spreadsheets", 200),
        (f"GET /v4/spreadsheets/{sid}", 200),
        ("GET /v4/spreadsheets/nope", 404),
    ]
    assert client.get("/_sluice/requests?limit=1").get_json() == log[-1:]
    assert client.get("/_sluice/requests?limit=x").status_code == 400

    page = client.get("/").get_data(as_text=True)
    assert "write_requests" in page and 'http-equiv="refresh"' in page
    assert page.index("/v4/spreadsheets/nope") < page.index(f"/v4/spreadsheets/{sid}")

    reset = client.post("/_sluice/reset").get_json()
    assert reset == {"requests": 0, "by_status": {}, "spreadsheets": 1}
    assert client.get("/_sluice/requests").get_json() == []


def test_a_server_started_on_a_free_port_knows_its_own_url() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "localcloud.sheets_server", "--port", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        match = re.fullmatch(r"listening on (http://127\.0\.0\.1:\d+)\n", line)
        assert match, line
        made = SheetsAPI(endpoint=match[1] + "/", timeout=10).create("mine", "Results", ["id"])
        # The spreadsheet's URL names the port picked, not the 0 asked for.
        assert made.url.startswith(match[1] + "/spreadsheets/d/")
        assert httpx.get(match[1] + "/healthz").text == "ok"
    finally:
        proc.terminate()
        assert proc.wait(10) == 0
