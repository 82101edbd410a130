"""status-api's Sheets routes, sheets-writer and backfill through functions-framework, on the
emulators and the local Sheets server: the failure paths one step at a time."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import UTC, datetime

import httpx
import pytest
from werkzeug.serving import make_server

from localcloud.sheets_server import SheetsConfig, create_app
from sluice.adapters.exports_store import ExportStore
from sluice.adapters.intake_store import NewItem
from sluice.adapters.sheets_api import SheetsAPI
from sluice.adapters.tenants_store import TenantStore
from sluice.domain.sheets import row_of
from testkit.client import bearer
from testkit.firestore_events import firestore_event
from testkit.stores import stores


@pytest.fixture
def sheets_server(monkeypatch) -> Iterator[str]:
    app = create_app(SheetsConfig(write_requests_per_minute=None), base_url="http://local")
    server = make_server("127.0.0.1", 0, app, threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_port}"
    monkeypatch.setenv("SLUICE_SHEETS_ENDPOINT", url)
    yield url
    server.shutdown()


@pytest.fixture
def batch(db) -> tuple[str, str]:
    """A tenant on the Sheets whitelist and its batch of two queued items: (api key, job id)."""
    tenant = TenantStore(db).create("sheety", sheets=True)
    store = stores(db, shards=2)
    store.intake.create_job("job1", {"tenant": tenant.id, "kind": "batch", "total": 2,
                              "state": "open", "intake": "published", "params": {}})  # fmt: skip
    store.intake.write_items("job1", [NewItem(f"i{n}", n, f"doc {n}") for n in range(2)],
                      at=datetime.now(UTC))  # fmt: skip
    return tenant.api_key, "job1"


def succeed(db, job_id: str, item_id: str) -> dict:
    fields = {"state": "succeeded", "result": {"content": f"answer {item_id}"},
              "finished_at": datetime.now(UTC)}  # fmt: skip
    ref = db.collection("jobs").document(job_id).collection("items").document(item_id)
    ref.update(fields)
    return ref.get().to_dict()


def queue(db, job_id: str, item_id: str) -> tuple[str, dict]:
    """A result recorded and queued for the export, as the processor's commit does: the path and
    fields of its row document, whose creation is the writer's event."""
    item = succeed(db, job_id, item_id)
    ExportStore(db).enqueue(job_id, item_id, row_of("batch", item_id, item))
    row = f"jobs/{job_id}/exports/sheets/rows/{item_id}"
    return row, db.document(row).get().to_dict()


def deliver(client, project: str, path: str, after: dict, event_id: str | None = None) -> int:
    body, headers = firestore_event(project, path, after)
    if event_id is not None:
        headers["ce-id"] = event_id
    return client.post("/", data=body, headers=headers).status_code


def test_configure_while_sheets_is_unreachable_answers_503_and_records_nothing(
    function_client, batch, monkeypatch
):
    monkeypatch.setenv("SLUICE_SHEETS_ENDPOINT", "http://127.0.0.1:9")
    key, job = batch
    status = function_client("status-api")
    answer = status.post(f"/v1/batches/{job}/sheets", headers=bearer(key))
    assert answer.status_code == 503 and answer.headers["Retry-After"]
    assert "unreachable" in answer.get_json()["detail"]
    assert status.get(f"/v1/batches/{job}/sheets", headers=bearer(key)).status_code == 404


def test_sheets_routes_need_a_key_and_an_existing_batch(function_client, sheets_server, batch):
    key, _ = batch
    status = function_client("status-api")
    assert status.post("/v1/batches/job1/sheets").status_code == 401
    assert status.post("/v1/batches/nope/sheets", headers=bearer(key)).status_code == 404
    me = status.get("/v1/me", headers=bearer(key)).get_json()
    assert me["features"]["sheets_export"] is True and me["tenant"] == "sheety"
    assert httpx.get(sheets_server + "/_sluice/stats").json()["spreadsheets"] == 0


def test_a_writer_that_lost_access_says_why_keeps_the_row_and_configuring_again_writes_it(
    function_client, sheets_server, batch, db, project
):
    key, job = batch
    status, writer = function_client("status-api"), function_client("sheets-writer")
    backfill = function_client("backfill")
    export = status.post(f"/v1/batches/{job}/sheets", headers=bearer(key)).get_json()
    access = f"{sheets_server}/_sluice/spreadsheets/{export['spreadsheet_id']}/access"
    httpx.post(access, json={"writable": False}).raise_for_status()

    row, queued = queue(db, job, "i0")
    # Acknowledged: a refusal for good is recorded, not redelivered for a day.
    assert deliver(writer, project, row, queued) == 200
    seen = status.get(f"/v1/batches/{job}/sheets", headers=bearer(key)).get_json()
    assert "403" in seen["last_error"] and seen["rows_written"] == 0

    httpx.post(access, json={"writable": True}).raise_for_status()
    assert status.post(f"/v1/batches/{job}/sheets", headers=bearer(key)).status_code == 200
    # Configuring again touched the export: its trigger runs the backfill function.
    assert deliver(backfill, project, f"jobs/{job}/exports/sheets", {"x": 1}) == 200
    seen = status.get(f"/v1/batches/{job}/sheets", headers=bearer(key)).get_json()
    assert seen["rows_written"] == 1 and seen["last_error"] is None
    assert seen["backfill_state"] == "completed" and seen["backfill_rows"] == 0

    # The same event again (Eventarc delivers at least once): no second row.
    assert deliver(writer, project, row, queued) == 200
    rows = SheetsAPI(endpoint=sheets_server, timeout=5).read(export["spreadsheet_id"], "A1:E")
    assert [r[0] for r in rows] == ["item_id", "i0"]
    assert rows[1][2] == "answer i0"


def test_a_row_the_backfill_numbered_or_of_a_job_without_export_writes_nothing(
    function_client, sheets_server, batch, db, project
):
    _, job = batch
    writer = function_client("sheets-writer")
    row, queued = queue(db, job, "i1")
    assert deliver(writer, project, row, queued) == 200  # no export
    numbered = {**queued, "row": 2}  # created numbered: the backfill writes it itself
    assert deliver(writer, project, f"jobs/{job}/exports/sheets/rows/i0", numbered) == 200
    _, headers = firestore_event(project, row, {})
    assert writer.post("/", data=b"\xff", headers=headers).status_code == 200  # undecodable
    assert [snap.get("written") for snap in db.collection_group("rows").stream()] == [False]
    assert httpx.get(sheets_server + "/_sluice/stats").json().get("write_requests", 0) == 0


def test_a_redelivered_event_takes_over_at_once_what_its_dead_delivery_held(
    function_client, sheets_server, batch, db, project
):
    key, job = batch
    status, writer = function_client("status-api"), function_client("sheets-writer")
    backfill = function_client("backfill")
    export = status.post(f"/v1/batches/{job}/sheets", headers=bearer(key)).get_json()
    exports, now = ExportStore(db), datetime.now(UTC)
    # A writer died holding the flush lease while delivering event "dead-writer"; the backfill
    # died holding its lease while delivering "dead-backfill". Both leases have a minute left.
    assert exports.take_lease(job, "flush", now=now, seconds=60, holder="dead-writer")
    assert exports.take_lease(job, "backfill", now=now, seconds=60, holder="dead-backfill")
    exports.update(job, {"backfill_state": "running"})

    row, queued = queue(db, job, "i0")
    # Another event finds the lease live: its row waits in the queue.
    assert deliver(writer, project, row, queued) == 200
    assert deliver(backfill, project, f"jobs/{job}/exports/sheets", {"x": 1}) == 200
    seen = status.get(f"/v1/batches/{job}/sheets", headers=bearer(key)).get_json()
    assert seen["rows_written"] == 0 and seen["backfill_state"] == "running"

    # The dead writer's event, delivered again: it drains the queue now, not in a minute.
    assert deliver(writer, project, row, queued, "dead-writer") == 200
    assert (
        status.get(f"/v1/batches/{job}/sheets", headers=bearer(key)).get_json()["rows_written"] == 1
    )
    # The dead backfill's event, delivered again: it resumes and completes the backfill now.
    assert (
        deliver(backfill, project, f"jobs/{job}/exports/sheets", {"x": 1}, "dead-backfill") == 200
    )
    seen = status.get(f"/v1/batches/{job}/sheets", headers=bearer(key)).get_json()
    assert seen["backfill_state"] == "completed" and seen["rows_written"] == 1
    rows = SheetsAPI(endpoint=sheets_server, timeout=5).read(export["spreadsheet_id"], "A1:E")
    assert [r[0] for r in rows] == ["item_id", "i0"]
