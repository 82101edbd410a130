"""The Sheets export on the local cloud: configure over HTTP, rows written by sheets-writer and
backfill through the local Sheets server, read back with the real API's `values.get`."""

from __future__ import annotations

import contextlib
import os
import random
import signal
import time
from datetime import datetime

import httpx
import pytest

from localcloud.cloud import Deployment
from sluice.adapters.sheets_api import SheetsAPI
from sluice.domain.sheets import BATCH_COLUMNS
from testkit.client import bearer, items_of, submit, wait_done, wait_for

pytestmark = pytest.mark.cloud

# A provider fast enough that a 1,000-item batch takes seconds, not the default 600/min.
FAST_AI = {"providers": {"ai": {"requests_per_minute": 60000, "max_concurrent": 10}}}


def status_of(http: httpx.Client, url: str, key: str) -> dict:
    return http.get(url, headers=bearer(key)).json()


def sheet_rows(d: Deployment, spreadsheet_id: str) -> list[list[str]]:
    """The whole sheet, read with the real client, as a person opening it would see it."""
    return SheetsAPI(endpoint=d.sheets_url, timeout=30).read(spreadsheet_id, "'results'!A1:E")


def assert_exactly_the_succeeded_results(http, d, accepted, key, export) -> None:
    succeeded = items_of(http, accepted["status_url"], key, state="succeeded")
    rows = sheet_rows(d, export["spreadsheet_id"])
    assert rows[0] == BATCH_COLUMNS
    body = rows[1:]
    assert all(body), "a blank row between results"
    ids = [row[0] for row in body]
    assert len(ids) == len(set(ids)), "a result written twice"
    assert set(ids) == {item["id"] for item in succeeded}
    by_id = {item["id"]: item for item in succeeded}
    for row in body:
        item = by_id[row[0]]
        assert row[2] == item["result"]["content"] and row[3] == "succeeded"


def wait_backfill_completed(http, url: str, key: str, rows: int, timeout: float = 240) -> dict:
    def done() -> dict | None:
        export = status_of(http, url, key)
        assert export["backfill_state"] != "failed", export
        complete = export["backfill_state"] == "completed" and export["rows_written"] >= rows
        return export if complete else None

    return wait_for(done, timeout, "the export to complete")


def configure_mid_run(http, d: Deployment, key: str, *, after: int) -> tuple[dict, dict]:
    """Submit 1,000 items and configure Sheets once `after` of them have finished."""
    accepted = submit(http, d, key, 1000)
    url = accepted["status_url"]
    wait_for(lambda: status_of(http, url, key)["finished"] >= after, 180, f"{after} done")
    configured = http.post(url + "/sheets", headers=bearer(key))
    assert configured.status_code == 201, configured.text
    return accepted, configured.json()


def test_configured_mid_batch_every_result_is_in_the_sheet_exactly_once(http, deploy, make_tenant):
    d = deploy(topology_overrides=FAST_AI)
    tenant = make_tenant("sheety", sheets=True)
    accepted, export = configure_mid_run(http, d, tenant.api_key, after=250)
    url = accepted["status_url"]
    assert export["backfill_state"] == "pending"
    assert export["spreadsheet_url"].endswith(f"/spreadsheets/d/{export['spreadsheet_id']}/edit")
    assert accepted["batch_id"] in export["spreadsheet_name"]
    assert status_of(http, url, tenant.api_key)["finished"] < 1000, "configured after the end"

    wait_done(http, url, tenant.api_key, timeout=300)
    final = wait_backfill_completed(http, url + "/sheets", tenant.api_key, rows=1000)
    assert final["rows_written"] == 1000
    assert 250 <= final["backfill_rows"] < 1000
    assert_exactly_the_succeeded_results(http, d, accepted, tenant.api_key, export)

    # Configuring again is the same spreadsheet, and changes nothing in it.
    again = http.post(url + "/sheets", headers=bearer(tenant.api_key))
    assert again.status_code == 200
    assert again.json()["spreadsheet_id"] == export["spreadsheet_id"]
    stats = http.get(d.sheets_url + "/_sluice/stats").json()
    assert stats["spreadsheets"] == 1
    # Rows go out batched: far fewer write calls than rows.
    assert stats["write_requests"] < 200, stats


def test_killed_writers_and_429s_still_give_every_result_exactly_once(http, deploy, make_tenant):
    d = deploy(
        topology_overrides={
            **FAST_AI,
            # Smaller chunks and short leases: several backfill calls to kill, quick takeovers.
            "exports": {"rows_per_call": 100, "lease_seconds": 5, "capacity_wait_seconds": 1},
            "providers": {**FAST_AI["providers"], "sheets": {"timeout_seconds": 2}},
            "schedules": {"sweeper": {"every_seconds": 2}},
        },
        # Slow writes (so a kill lands mid-call) and one in six refused with a 429.
        sheets_args=["--latency-ms", "150", "--throttle-rate", "0.15", "--seed", "11"],
    )
    tenant = make_tenant("sheety", sheets=True)
    accepted, export = configure_mid_run(http, d, tenant.api_key, after=400)
    url = accepted["status_url"]

    # Eight kills, half a second to two seconds apart, while the backfill and the writers run:
    # killing on until the backfill happened to complete between two kills cost minutes of
    # restarts, and proved no more.
    rng, kills = random.Random(5), 0
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and kills < 8:
        victim = d.functions[rng.choice(["sheets-writer", "backfill"])]
        pid = victim.pid
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):  # exited after its pid was read
                os.kill(pid, signal.SIGKILL)
                kills += 1
        time.sleep(rng.uniform(0.5, 2.0))
    assert kills >= 6

    wait_done(http, url, tenant.api_key, timeout=300)
    wait_backfill_completed(http, url + "/sheets", tenant.api_key, rows=1000, timeout=300)
    assert_exactly_the_succeeded_results(http, d, accepted, tenant.api_key, export)
    stats = http.get(d.sheets_url + "/_sluice/stats").json()
    assert stats.get("throttled", 0) > 0, "the Sheets server never said 429"
    restarts = d.functions["sheets-writer"].restarts + d.functions["backfill"].restarts
    assert restarts >= 6


def test_a_killed_writer_and_backfill_leave_every_result_in_the_sheet_within_the_deadline(
    http, deploy, make_tenant
):
    # The declared topology (leases, sweeps a minute apart, redelivery): only the provider is
    # fast, and each Sheets call takes 150 ms so that a kill lands in the middle of one. Its
    # 500 ms answers keep the batch running for some rounds of kills (on a loaded machine a
    # faster batch ended before the kill loop had a round).
    d = deploy(
        topology_overrides=FAST_AI,
        provider_args=["--latency-ms", "500"],
        sheets_args=["--latency-ms", "150"],
    )
    within = d.topology.exports.complete_within_seconds
    key = make_tenant("sheety", sheets=True).api_key
    accepted = submit(http, d, key, 240)
    url = accepted["status_url"]
    wait_for(lambda: status_of(http, url, key)["finished"] >= 40, 120, "40 done")
    configured = http.post(url + "/sheets", headers=bearer(key))
    assert configured.status_code == 201, configured.text
    export = configured.json()

    def kill(name: str) -> bool:
        pid = d.functions[name].pid
        if pid is None:
            return False
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:  # it exited after its pid was read: its restart is under way
            return False
        return True

    # The backfill while it writes the first 40 rows, then both, one after the other, until the
    # batch ends, and both again at its end, when the last rows are queued or being written.
    rng, kills = random.Random(8), {"sheets-writer": 0, "backfill": 0}
    time.sleep(rng.uniform(0.1, 0.4))
    kills["backfill"] += kill("backfill")
    victims = ["sheets-writer", "backfill"]
    while status_of(http, url, key)["state"] != "completed":
        time.sleep(rng.uniform(0.5, 1.5))
        victim = min(victims, key=lambda name: kills[name])  # the one killed least so far
        kills[victim] += kill(victim)
    for name in victims:
        # (A kill finding its process restarting tries again: the new one is there at once.)
        wait_for(lambda name=name: kill(name), 30, f"{name} killed at the end", every=0.1)
        kills[name] += 1
    assert kills["sheets-writer"] >= 2 and kills["backfill"] >= 2, kills

    ended = datetime.fromisoformat(status_of(http, url, key)["completed_at"]).timestamp()
    succeeded = {item["id"] for item in items_of(http, url, key, state="succeeded")}
    assert len(succeeded) == 240

    def complete() -> bool:
        rows = sheet_rows(d, export["spreadsheet_id"])[1:]
        return sorted(row[0] for row in rows if row) == sorted(succeeded)

    # The deadline is the topology's: `within` seconds after the batch's last result.
    while not complete() and time.time() < ended + within:
        time.sleep(0.5)
    assert_exactly_the_succeeded_results(http, d, accepted, key, export)
    restarts = d.functions["sheets-writer"].restarts + d.functions["backfill"].restarts
    assert restarts >= 4


def test_configure_answers_before_the_backfill_and_only_for_the_whitelist(
    http, deploy, make_tenant
):
    # Every Sheets call takes 300 ms: a backfill row written before the answer would show.
    d = deploy(topology_overrides=FAST_AI, sheets_args=["--latency-ms", "300"])
    plain, other = make_tenant("plain"), make_tenant("other", sheets=True)
    # A finished batch of a tenant without the feature: its size matters to no answer below.
    accepted = submit(http, d, plain.api_key, 20)
    url = accepted["status_url"]
    wait_done(http, url, plain.api_key, timeout=180)

    me = http.get(d.url("status-api") + "/v1/me", headers=bearer(plain.api_key)).json()
    assert me["features"]["sheets_export"] is False
    refused = http.post(url + "/sheets", headers=bearer(plain.api_key))
    assert refused.status_code == 403
    assert "not enabled" in refused.json()["detail"]
    assert refused.headers["Content-Type"] == "application/problem+json"
    # Another tenant's batch is not found, whether or not it has Sheets export.
    assert http.post(url + "/sheets", headers=bearer(other.api_key)).status_code == 404
    assert http.get(url + "/sheets", headers=bearer(other.api_key)).status_code == 404
    assert http.get(d.sheets_url + "/_sluice/stats").json()["spreadsheets"] == 0

    # A tenant on the whitelist, its own batch.
    mine = submit(http, d, other.api_key, 600)
    wait_done(http, mine["status_url"], other.api_key, timeout=180)
    sheets_url = mine["status_url"] + "/sheets"
    assert http.get(sheets_url, headers=bearer(other.api_key)).status_code == 404  # none yet
    configured = http.post(sheets_url, headers=bearer(other.api_key))
    at_answer = http.get(d.sheets_url + "/_sluice/stats").json()
    assert configured.status_code == 201
    assert configured.json()["backfill_state"] == "pending"
    assert at_answer.get("rows_written", 0) == 0  # only the create, header included

    final = wait_backfill_completed(http, sheets_url, other.api_key, rows=600)
    assert final["backfill_rows"] == 600
    assert_exactly_the_succeeded_results(http, d, mine, other.api_key, configured.json())
    # 600 rows in chunks of up to 500: two write calls after the create.
    assert http.get(d.sheets_url + "/_sluice/stats").json()["write_requests"] == 3


def test_a_backfill_that_lost_access_fails_with_the_reason_and_runs_again_when_configured(
    http, deploy, make_tenant
):
    d = deploy(topology_overrides=FAST_AI, sheets_args=["--latency-ms", "300"])
    tenant = make_tenant("sheety", sheets=True)
    accepted = submit(http, d, tenant.api_key, 20)
    url = accepted["status_url"]
    wait_done(http, url, tenant.api_key)
    export = http.post(url + "/sheets", headers=bearer(tenant.api_key)).json()
    # The owner removes Sluice's access before the backfill's first write.
    access = f"{d.sheets_url}/_sluice/spreadsheets/{export['spreadsheet_id']}/access"
    httpx.post(access, json={"writable": False}).raise_for_status()

    failed = wait_for(
        lambda: (e := status_of(http, url + "/sheets", tenant.api_key))["backfill_state"]
        == "failed" and e,
        60, "the backfill to fail",
    )  # fmt: skip
    assert "403" in failed["backfill_error"] and failed["rows_written"] == 0

    httpx.post(access, json={"writable": True}).raise_for_status()
    again = http.post(url + "/sheets", headers=bearer(tenant.api_key))
    assert again.status_code == 200 and again.json()["spreadsheet_id"] == export["spreadsheet_id"]
    wait_backfill_completed(http, url + "/sheets", tenant.api_key, rows=20, timeout=60)
    assert_exactly_the_succeeded_results(http, d, accepted, tenant.api_key, export)
