"""A local Google Sheets API (v4 REST), for local runs and tests of the Sheets export.

It answers the calls Sluice makes through `google-api-python-client`, at the same paths and with
the same bodies: `spreadsheets.create`, `spreadsheets.get`, `spreadsheets.batchUpdate`
(`appendDimension`), `spreadsheets.values.update`, `values.batchUpdate` and `values.get`. The
real API's rules that shape a writer are kept: a new sheet has 1000 rows and 26 columns and a
write outside the grid is a 400 ("exceeds grid limits"); a spreadsheet holds at most 10 million
cells; write requests past the per-minute quota get a 429 `RESOURCE_EXHAUSTED`. A share of writes
can also be refused with a 429 at random (`throttle_rate`), as the real API does now and then.

`GET /_sluice/stats` counts requests, write requests and what they carried, `GET /_sluice/requests`
lists the last calls, `POST /_sluice/reset` zeroes both; `GET`/`POST /_sluice/config` read and
change the behaviour at runtime; `GET /` shows it all in a browser. These, and the command line,
come from `local_server`, the base of every local server. Run it with
`python -m localcloud.sheets_server --port 0` (one flag per behaviour field); it prints
`listening on http://HOST:PORT`.
"""

from __future__ import annotations

import io
import re
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import flask
import openpyxl
from pydantic import Field

from localcloud.local_server import (
    BaseBehaviour,
    Call,
    Clock,
    Column,
    Counters,
    LocalServer,
    RuntimeConfig,
    ServeOptions,
    SlidingWindow,
    calls_log,
    json_response,
    local_app,
    pause,
)
from sluice.domain.sheets import column_letters

NEW_SHEET_ROWS = 1000
NEW_SHEET_COLUMNS = 26
MAX_CELLS = 10_000_000
API_PREFIX = "/v4/"


class Behaviour(BaseBehaviour):
    """How the Sheets API behaves."""

    # Google: 60 write requests a minute per user (and 300 per project).
    write_requests_per_minute: int | None = Field(
        default=60, ge=0, description="past this many write requests in 60 s, answer 429"
    )
    throttle_rate: float = Field(
        default=0.0, ge=0, le=1, description="fraction of write requests answered 429 at random"
    )
    latency_ms: float = Field(default=0.0, ge=0, description="sleep this long per write request")


class SheetsConfig(RuntimeConfig[Behaviour]):
    model = Behaviour

    def throttle(self) -> tuple[Behaviour, bool]:
        return self._draw(lambda b, rng: rng.random() < b.throttle_rate)


@dataclass
class _Call(Call):
    request: str = ""  # method and path

    def as_dict(self) -> dict[str, Any]:
        return {**super().as_dict(), "request": self.request}


class SheetsStats(Counters[_Call]):
    """What the server saw: every API call is logged; `count` adds to what writes carried (a key
    appears once counted). How many spreadsheets there are is not zeroed by a reset."""

    def __init__(self, spreadsheets: Callable[[], int], clock: Clock = time.monotonic) -> None:
        self._spreadsheets = spreadsheets
        super().__init__(clock)

    def _zero(self) -> None:
        super()._zero()
        self._counts: dict[str, int] = {}

    def _counted(self) -> dict[str, Any]:
        return {"spreadsheets": self._spreadsheets(), **self._counts}

    def count(self, key: str, n: int = 1) -> None:
        with self._lock:
            self._counts[key] = self._counts.get(key, 0) + n

    def arrive(self, request: str) -> _Call:
        with self._lock:
            call = _Call(generation=self._arrived(), at=time.time(), request=request)
            self._log.append(call)
            return call

    def finish(self, call: _Call, status: int) -> None:
        with self._lock:
            self._end(call, status)


class ApiError(Exception):
    def __init__(self, code: int, status: str, message: str) -> None:
        super().__init__(message)
        self.code, self.status, self.message = code, status, message

    def response(self) -> flask.Response:
        body = {"error": {"code": self.code, "message": self.message, "status": self.status}}
        return json_response(body, self.code)


@dataclass
class Sheet:
    sheet_id: int
    title: str
    rows: int = NEW_SHEET_ROWS
    columns: int = NEW_SHEET_COLUMNS
    cells: dict[tuple[int, int], Any] = field(default_factory=dict)  # (row, col), 0-based

    def properties(self) -> dict[str, Any]:
        grid = {"rowCount": self.rows, "columnCount": self.columns}
        return {"sheetId": self.sheet_id, "title": self.title, "index": 0,
                "sheetType": "GRID", "gridProperties": grid}  # fmt: skip


@dataclass
class Spreadsheet:
    spreadsheet_id: str
    title: str
    url: str
    sheets: list[Sheet]

    def sheet(self, title: str | None) -> Sheet:
        for sheet in self.sheets:
            if title is None or sheet.title == title:
                return sheet
        raise ApiError(400, "INVALID_ARGUMENT", f"Unable to parse range: {title}")

    def cell_count(self) -> int:
        return sum(s.rows * s.columns for s in self.sheets)

    def body(self) -> dict[str, Any]:
        return {
            "spreadsheetId": self.spreadsheet_id,
            "properties": {"title": self.title, "locale": "en_US", "timeZone": "Etc/GMT"},
            "sheets": [{"properties": s.properties()} for s in self.sheets],
            "spreadsheetUrl": self.url,
        }


A1 = re.compile(r"^(?:(?:'((?:[^']|'')+)'|([^!]+))!)?([A-Z]+)(\d+)(?::([A-Z]+)(\d+)?)?$")


def column_index(letters: str) -> int:
    n = 0
    for ch in letters:
        n = n * 26 + (ord(ch) - 64)
    return n - 1


def parse_range(text: str) -> tuple[str | None, int, int, int | None, int | None]:
    """`'My sheet'!B2:D9` as (sheet title, first row, first column, last row, last column),
    0-based; the last two are None when open-ended."""
    m = A1.match(text)
    if not m:
        raise ApiError(400, "INVALID_ARGUMENT", f"Unable to parse range: {text}")
    quoted, bare, c1, r1, c2, r2 = m.groups()
    title = quoted.replace("''", "'") if quoted else bare
    end_col = column_index(c2) if c2 else None
    end_row = int(r2) - 1 if r2 else None
    return title, int(r1) - 1, column_index(c1), end_row, end_col


class Store:
    def __init__(self, base_url: str, clock: Clock = time.monotonic) -> None:
        self._lock = threading.Lock()
        self._base_url = base_url
        self.spreadsheets: dict[str, Spreadsheet] = {}
        self.writes = SlidingWindow(60.0)
        self.stats = SheetsStats(lambda: len(self.spreadsheets), clock)
        # Spreadsheets whose owner removed the caller's access: every write is a 403.
        self.revoked: set[str] = set()

    def create(self, body: dict[str, Any]) -> Spreadsheet:
        title = (body.get("properties") or {}).get("title") or "Untitled spreadsheet"
        sheet_specs = body.get("sheets") or [{"properties": {"title": "Sheet1"}}]
        sheets = []
        for i, spec in enumerate(sheet_specs):
            props = spec.get("properties") or {}
            grid = props.get("gridProperties") or {}
            sheet = Sheet(i, props.get("title") or f"Sheet{i + 1}",
                          int(grid.get("rowCount", NEW_SHEET_ROWS)),
                          int(grid.get("columnCount", NEW_SHEET_COLUMNS)))  # fmt: skip
            # Initial contents (GridData from A1): how a header row is written with the create.
            for data in spec.get("data") or []:
                for r, row in enumerate(data.get("rowData") or []):
                    for c, cell in enumerate(row.get("values") or []):
                        value = (cell.get("userEnteredValue") or {}).values()
                        sheet.cells[(r, c)] = next(iter(value), "")
            sheets.append(sheet)
        sid = uuid.uuid4().hex + uuid.uuid4().hex[:12]
        spreadsheet = Spreadsheet(sid, title, f"{self._base_url}/spreadsheets/d/{sid}/edit", sheets)
        with self._lock:
            self.spreadsheets[sid] = spreadsheet
        return spreadsheet

    def get(self, spreadsheet_id: str) -> Spreadsheet:
        found = self.spreadsheets.get(spreadsheet_id)
        if found is None:
            raise ApiError(404, "NOT_FOUND", "Requested entity was not found.")
        return found

    def writable(self, spreadsheet_id: str) -> Spreadsheet:
        found = self.get(spreadsheet_id)
        if spreadsheet_id in self.revoked:
            raise ApiError(403, "PERMISSION_DENIED", "The caller does not have permission")
        return found

    def write(self, spreadsheet_id: str, range_: str, values: list[list[Any]]) -> dict[str, Any]:
        spreadsheet = self.writable(spreadsheet_id)
        title, row, col, _, _ = parse_range(range_)
        with self._lock:
            sheet = spreadsheet.sheet(title)
            height = len(values)
            width = max((len(r) for r in values), default=0)
            if row + height > sheet.rows or col + width > sheet.columns:
                raise ApiError(
                    400, "INVALID_ARGUMENT",
                    f"Range ('{sheet.title}'!{range_.split('!')[-1]}) exceeds grid limits. "
                    f"Max rows: {sheet.rows}, max columns: {sheet.columns}",
                )  # fmt: skip
            for r, line in enumerate(values):
                for c, value in enumerate(line):
                    if value is None:
                        continue  # as in the API: null leaves the cell as it is
                    sheet.cells[(row + r, col + c)] = value
            self.stats.count("rows_written", height)
            self.stats.count("cells_written", sum(len(r) for r in values))
        last = f"{column_letters(col + max(width - 1, 0))}{row + max(height, 1)}"
        return {"spreadsheetId": spreadsheet_id,
                "updatedRange": f"'{sheet.title}'!{column_letters(col)}{row + 1}:{last}",
                "updatedRows": height, "updatedColumns": width,
                "updatedCells": sum(len(r) for r in values)}  # fmt: skip

    def read(self, spreadsheet_id: str, range_: str) -> dict[str, Any]:
        spreadsheet = self.get(spreadsheet_id)
        title, row, col, end_row, end_col = parse_range(range_)
        with self._lock:
            sheet = spreadsheet.sheet(title)
            last_row = sheet.rows - 1 if end_row is None else end_row
            last_col = sheet.columns - 1 if end_col is None else end_col
            rows: list[list[Any]] = []
            for r in range(row, min(last_row, sheet.rows - 1) + 1):
                line = [sheet.cells.get((r, c), "") for c in range(col, last_col + 1)]
                while line and line[-1] == "":
                    line.pop()
                rows.append(line)
        while rows and not rows[-1]:
            rows.pop()
        body: dict[str, Any] = {"range": range_, "majorDimension": "ROWS"}
        if rows:
            body["values"] = rows
        return body

    def batch_update(self, spreadsheet_id: str, requests: list[dict[str, Any]]) -> dict[str, Any]:
        spreadsheet = self.writable(spreadsheet_id)
        with self._lock:
            for request in requests:
                append = request.get("appendDimension")
                if append is None:
                    raise ApiError(400, "INVALID_ARGUMENT",
                                   f"Unsupported request: {sorted(request)}")  # fmt: skip
                sheet = next((s for s in spreadsheet.sheets
                              if s.sheet_id == append.get("sheetId", 0)), None)  # fmt: skip
                if sheet is None:
                    raise ApiError(400, "INVALID_ARGUMENT", "No grid with id: "
                                   f"{append.get('sheetId')}")  # fmt: skip
                length = int(append.get("length", 0))
                rows = append.get("dimension") == "ROWS"
                added = length * (sheet.columns if rows else sheet.rows)
                if spreadsheet.cell_count() + added > MAX_CELLS:
                    raise ApiError(400, "INVALID_ARGUMENT",
                                   "This action would increase the number of cells in the "
                                   f"workbook above the limit of {MAX_CELLS} cells.")  # fmt: skip
                if rows:
                    sheet.rows += length
                else:
                    sheet.columns += length
        return {"spreadsheetId": spreadsheet_id, "replies": [{} for _ in requests]}


def to_xlsx(spreadsheet: Spreadsheet) -> bytes:
    """The spreadsheet's sheets and cells as an .xlsx workbook (openpyxl)."""
    book = openpyxl.Workbook()
    book.remove(book.active)
    for sheet in spreadsheet.sheets:
        page = book.create_sheet(sheet.title[:31])  # Excel's limit on a sheet's name
        for (row, col), value in sorted(sheet.cells.items()):
            page.cell(row=row + 1, column=col + 1, value=value)
    book.properties.title = spreadsheet.title
    out = io.BytesIO()
    book.save(out)
    return out.getvalue()


LOG = calls_log(Column("request", lambda c: str(c["request"]), css="text"))


def create_app(
    config: SheetsConfig,
    *,
    base_url: str = "",
    clock: Clock = time.monotonic,
    stopping: threading.Event | None = None,
) -> flask.Flask:
    """The Sheets API as a Flask app; spreadsheet URLs start with `base_url`. `clock` (monotonic
    seconds) drives the write quota; setting `stopping` cuts short every sleep."""
    store = Store(base_url, clock)
    stop = stopping if stopping is not None else threading.Event()
    app = local_app(
        __name__,
        title="Sluice local Google Sheets API",
        config=config,
        counters=store.stats,
        log=LOG,
        bad_request=lambda m: ApiError(400, "INVALID_ARGUMENT", m).response(),
        http_error=lambda e: ApiError(e.code or 500, "NOT_FOUND", e.description or "").response(),
    )

    @app.before_request
    def arrive() -> None:
        if flask.request.path.startswith(API_PREFIX):
            flask.g.call = store.stats.arrive(f"{flask.request.method} {flask.request.path}")

    @app.after_request
    def finish(response: flask.Response) -> flask.Response:
        call = flask.g.pop("call", None)
        if call is not None:
            store.stats.finish(call, response.status_code)
        return response

    def admit_write() -> None:
        """A write request counts against the per-minute quota, and may be throttled at random."""
        behaviour, throttled = config.throttle()
        pause(stop, behaviour.latency_ms)
        with store._lock:
            now = clock()
            limit = behaviour.write_requests_per_minute
            over = limit is not None and store.writes.count(now) >= limit
            if throttled or over:
                store.stats.count("throttled")
                raise ApiError(
                    429, "RESOURCE_EXHAUSTED",
                    "Quota exceeded for quota metric 'Write requests' and limit 'Write requests "
                    "per minute per user' of service 'sheets.googleapis.com'.",
                )  # fmt: skip
            store.writes.add(now)
            store.stats.count("write_requests")

    def body() -> dict[str, Any]:
        data = flask.request.get_json(force=True, silent=True)
        if not isinstance(data, dict):
            raise ApiError(400, "INVALID_ARGUMENT", "Invalid JSON payload received.")
        return data

    def values_of(data: dict[str, Any]) -> list[list[Any]]:
        values = data.get("values", [])
        if not isinstance(values, list) or not all(isinstance(r, list) for r in values):
            raise ApiError(400, "INVALID_ARGUMENT", "'values' must be a list of rows.")
        return values

    def input_option() -> None:
        option = flask.request.args.get("valueInputOption")
        if option not in ("RAW", "USER_ENTERED"):
            raise ApiError(400, "INVALID_ARGUMENT", "'valueInputOption' is required.")

    @app.errorhandler(ApiError)
    def api_error(error: ApiError) -> flask.Response:
        return error.response()

    @app.post("/v4/spreadsheets")
    def create() -> flask.Response:
        admit_write()
        return json_response(store.create(body()).body())

    @app.get("/v4/spreadsheets/<spreadsheet_id>")
    def get(spreadsheet_id: str) -> flask.Response:
        return json_response(store.get(spreadsheet_id).body())

    @app.post("/v4/spreadsheets/<spreadsheet_id>:batchUpdate")
    def batch_update(spreadsheet_id: str) -> flask.Response:
        admit_write()
        return json_response(store.batch_update(spreadsheet_id, body().get("requests") or []))

    @app.put("/v4/spreadsheets/<spreadsheet_id>/values/<path:range_>")
    def update(spreadsheet_id: str, range_: str) -> flask.Response:
        input_option()
        data = body()
        admit_write()
        return json_response(store.write(spreadsheet_id, range_, values_of(data)))

    @app.post("/v4/spreadsheets/<spreadsheet_id>/values:batchUpdate")
    def values_batch_update(spreadsheet_id: str) -> flask.Response:
        data = body()
        if data.get("valueInputOption") not in ("RAW", "USER_ENTERED"):
            raise ApiError(400, "INVALID_ARGUMENT", "'valueInputOption' is required.")
        ranges = data.get("data") or []
        admit_write()
        replies = [store.write(spreadsheet_id, r["range"], values_of(r)) for r in ranges]
        total = sum(r["updatedRows"] for r in replies)
        return json_response(
            {"spreadsheetId": spreadsheet_id, "responses": replies, "totalUpdatedRows": total}
        )

    @app.get("/v4/spreadsheets/<spreadsheet_id>/values/<path:range_>")
    def read(spreadsheet_id: str, range_: str) -> flask.Response:
        return json_response(store.read(spreadsheet_id, range_))

    @app.get("/_sluice/spreadsheets/<spreadsheet_id>.xlsx")
    def workbook(spreadsheet_id: str) -> flask.Response:
        """A spreadsheet as an .xlsx workbook, for a person to open (`make run`)."""
        with store._lock:
            data = to_xlsx(store.get(spreadsheet_id))
        return flask.Response(
            data,
            mimetype="application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
            headers={"Content-Disposition": f'attachment; filename="{spreadsheet_id}.xlsx"'},
        )

    @app.post("/_sluice/spreadsheets/<spreadsheet_id>/access")
    def access(spreadsheet_id: str) -> flask.Response:
        """Test control: `{"writable": false}` is the owner removing Sluice's access."""
        writable = (flask.request.get_json(silent=True) or {}).get("writable", True)
        with store._lock:
            (store.revoked.discard if writable else store.revoked.add)(spreadsheet_id)
        return json_response({"spreadsheet_id": spreadsheet_id, "writable": bool(writable)})

    return app


SERVER = LocalServer(
    module="localcloud.sheets_server",
    description="A local Google Sheets API (v4 REST) for local runs and tests.",
    config=SheetsConfig,
    options=ServeOptions,
    # Spreadsheet URLs name the port the server was bound to, also when it was picked (port 0).
    make_app=lambda config, options, stopping, url: create_app(
        config, base_url=url, stopping=stopping
    ),
)


if __name__ == "__main__":
    sys.exit(SERVER.main())
