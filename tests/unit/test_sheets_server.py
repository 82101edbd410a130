"""The local Sheets server, driven by the real client (google-api-python-client) through the
Sheets adapter: the calls Sluice makes, and the API's rules that shape a writer."""

from __future__ import annotations

import io
import threading
from collections.abc import Iterator

import httpx
import openpyxl
import pytest
from werkzeug.serving import make_server

from localcloud.sheets_server import SheetsConfig, create_app, parse_range
from sluice.adapters.outside import ProviderError
from sluice.adapters.sheets_api import SheetsAPI, runs


@pytest.fixture
def server() -> Iterator[tuple[str, SheetsConfig]]:
    config = SheetsConfig(write_requests_per_minute=None)
    http = make_server("127.0.0.1", 0, create_app(config, base_url="http://local"), threaded=True)
    thread = threading.Thread(target=http.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{http.server_port}/", config
    http.shutdown()


@pytest.fixture
def api(server) -> SheetsAPI:
    return SheetsAPI(endpoint=server[0], timeout=5)


def test_a_created_spreadsheet_has_its_header_and_the_rows_written_to_fixed_ranges(api):
    made = api.create("Batch 42", "Results", ["item_id", "result"])
    assert made.rows == 1000 and made.url.endswith(f"/spreadsheets/d/{made.spreadsheet_id}/edit")
    assert api.write_rows(made.spreadsheet_id, "Results", {2: ["a", "1"], 3: ["b", "2"],
                                                            7: ["c", "3"]}) == 3  # fmt: skip
    # The same rows again land on the same cells: nothing is appended.
    api.write_rows(made.spreadsheet_id, "Results", {3: ["b", "2"]})
    assert api.read(made.spreadsheet_id, "'Results'!A1:B") == [
        ["item_id", "result"], ["a", "1"], ["b", "2"], [], [], [], ["c", "3"],
    ]  # fmt: skip


def test_a_write_past_the_grid_is_refused_until_rows_are_added(api):
    made = api.create("big", "Results", ["id"])
    with pytest.raises(ProviderError, match="exceeds grid limits") as refused:
        api.write_rows(made.spreadsheet_id, "Results", {1001: ["x"]})
    assert refused.value.permanent
    api.add_rows(made.spreadsheet_id, made.sheet_id, 500)
    assert api.row_count(made.spreadsheet_id, "Results") == 1500
    api.write_rows(made.spreadsheet_id, "Results", {1001: ["x"]})
    assert api.read(made.spreadsheet_id, "'Results'!A1001") == [["x"]]


def test_the_ten_million_cell_limit_holds_and_a_sheet_has_only_its_columns(api):
    made = api.create("huge", "Results", ["id", "state"])
    with pytest.raises(ProviderError, match="exceeds grid limits"):
        api.write_rows(made.spreadsheet_id, "Results", {2: ["a", "b", "c"]})  # a third column
    api.add_rows(made.spreadsheet_id, made.sheet_id, 10_000_000 // 2 - 1000)  # just fits
    with pytest.raises(ProviderError, match="above the limit of 10000000 cells"):
        api.add_rows(made.spreadsheet_id, made.sheet_id, 1)


def test_writes_past_the_quota_are_429s_the_adapter_calls_rate_limits(server, api):
    made = api.create("q", "Results", ["id"])
    server[1].update({"write_requests_per_minute": 3})
    api.write_rows(made.spreadsheet_id, "Results", {2: ["a"]})
    with pytest.raises(ProviderError) as limited:
        for n in range(5):
            api.write_rows(made.spreadsheet_id, "Results", {3 + n: ["b"]})
    assert limited.value.rate_limited and not limited.value.permanent
    assert "429" in str(limited.value)


def test_unknown_spreadsheets_and_bad_ranges_are_permanent_errors(api):
    with pytest.raises(ProviderError, match="404") as missing:
        api.read("nope", "A1")
    assert missing.value.permanent
    made = api.create("r", "Results", ["id"])
    with pytest.raises(ProviderError, match="400") as bad:
        api.read(made.spreadsheet_id, "not a range")
    assert bad.value.permanent
    assert parse_range("'It''s'!B2:D") == ("It's", 1, 1, None, 3)


def test_rows_become_runs_of_consecutive_rows():
    assert runs({5: ["e"], 2: ["b"], 3: ["c"], 9: ["i"]}) == [
        (2, [["b"], ["c"]]), (5, [["e"]]), (9, [["i"]]),
    ]  # fmt: skip


def test_a_spreadsheet_and_its_header_cost_one_write_request(server, api):
    made = api.create("one", "Results", ["item_id", "state"])
    stats = httpx.get(server[0] + "_sluice/stats").json()
    assert stats["write_requests"] == 1
    assert api.read(made.spreadsheet_id, "'Results'!A1:B2") == [["item_id", "state"]]


def test_a_spreadsheet_whose_access_was_removed_refuses_writes_for_good(server, api):
    made = api.create("gone", "Results", ["id"])
    url = f"{server[0]}_sluice/spreadsheets/{made.spreadsheet_id}/access"
    httpx.post(url, json={"writable": False}).raise_for_status()
    with pytest.raises(ProviderError, match="403") as refused:
        api.write_rows(made.spreadsheet_id, "Results", {2: ["a"]})
    assert refused.value.permanent
    httpx.post(url, json={"writable": True}).raise_for_status()
    assert api.write_rows(made.spreadsheet_id, "Results", {2: ["a"]}) == 1


def test_a_spreadsheet_opens_as_an_xlsx_workbook(server, api):
    made = api.create("Batch 7", "results", ["item_id", "result"])
    api.write_rows(made.spreadsheet_id, "results", {2: ["a", "first"], 4: ["c", "third"]})
    answer = httpx.get(f"{server[0]}_sluice/spreadsheets/{made.spreadsheet_id}.xlsx")
    assert answer.status_code == 200
    book = openpyxl.load_workbook(io.BytesIO(answer.content))
    rows = list(book["results"].iter_rows(values_only=True))
    assert rows == [("item_id", "result"), ("a", "first"), (None, None), ("c", "third")]
    assert httpx.get(f"{server[0]}_sluice/spreadsheets/nope.xlsx").status_code == 404
