"""Google Sheets through `google-api-python-client`, built from the discovery document it ships.

In the cloud every function that touches Sheets acts as one service account (`service_account`,
impersonated with the function's own credentials): the spreadsheet that status-api creates is then
one that sheets-writer and backfill may write. Locally `endpoint` points at the local Sheets server
and no credentials are sent.
Every failure comes out as a `ProviderError`: a 429 is a rate limit, 5xx and transport errors
are transient, any other 4xx is permanent.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import google.auth
import httplib2
from google.auth import impersonated_credentials
from google.auth.credentials import AnonymousCredentials, Credentials
from google_auth_httplib2 import AuthorizedHttp
from googleapiclient.discovery import build
from googleapiclient.errors import HttpError

from sluice.adapters.outside import ProviderError, retry_after_seconds
from sluice.domain.sheets import column_letters

SCOPES = ["https://www.googleapis.com/auth/spreadsheets"]


@dataclass(frozen=True)
class Created:
    spreadsheet_id: str
    url: str
    sheet_id: int
    rows: int


def runs(rows: Mapping[int, Sequence[Any]]) -> list[tuple[int, list[Sequence[Any]]]]:
    """Rows by number as runs of consecutive rows: one range each in a single batch write."""
    out: list[tuple[int, list[Sequence[Any]]]] = []
    for number in sorted(rows):
        if out and out[-1][0] + len(out[-1][1]) == number:
            out[-1][1].append(rows[number])
        else:
            out.append((number, [rows[number]]))
    return out


def _credentials(endpoint: str | None, service_account: str | None) -> Credentials:
    if endpoint:
        return AnonymousCredentials()
    if not service_account:
        return google.auth.default(scopes=SCOPES)[0]
    own, _ = google.auth.default(scopes=["https://www.googleapis.com/auth/cloud-platform"])
    return impersonated_credentials.Credentials(
        source_credentials=own, target_principal=service_account, target_scopes=SCOPES
    )


class SheetsAPI:
    def __init__(
        self, *, endpoint: str | None, timeout: float, service_account: str | None = None
    ) -> None:
        self._endpoint = endpoint
        self._timeout = timeout
        self._credentials = _credentials(endpoint, service_account)
        # httplib2 is not thread-safe: one service object per thread, as the library advises.
        self._local = threading.local()

    def _service(self) -> Any:
        service = getattr(self._local, "service", None)
        if service is None:
            http = AuthorizedHttp(self._credentials, http=httplib2.Http(timeout=self._timeout))
            options = {"api_endpoint": self._endpoint} if self._endpoint else None
            service = build("sheets", "v4", http=http, client_options=options,
                            static_discovery=True, cache_discovery=False)  # fmt: skip
            self._local.service = service
        return service

    def _run(self, request: Any) -> Any:
        try:
            return request.execute(num_retries=0)
        except HttpError as exc:
            status = int(exc.resp.status)
            reason = f"Sheets API answered {status}: {exc.reason}"
            if status == 429:
                retry = retry_after_seconds(exc.resp.get("retry-after"))
                raise ProviderError(reason, permanent=False, retry_after=retry,
                                    rate_limited=True) from None  # fmt: skip
            raise ProviderError(reason, permanent=status < 500 and status != 408) from None
        except (TimeoutError, OSError, httplib2.HttpLib2Error) as exc:
            raise ProviderError(f"Sheets API unreachable: {exc}", permanent=False) from None

    def create(self, title: str, sheet_title: str, header: Sequence[str]) -> Created:
        """A spreadsheet with one sheet whose first row is `header`: one write request."""
        cells = [{"userEnteredValue": {"stringValue": str(h)}} for h in header]
        # Only the columns it needs: the 10 million cell limit counts every cell of the grid.
        grid = {"columnCount": len(header)}
        sheet = {
            "properties": {"title": sheet_title, "gridProperties": grid},
            "data": [{"startRow": 0, "startColumn": 0, "rowData": [{"values": cells}]}],
        }
        body = {"properties": {"title": title}, "sheets": [sheet]}  # fmt: skip
        made = self._run(self._service().spreadsheets().create(body=body))
        props = made["sheets"][0]["properties"]
        return Created(made["spreadsheetId"], made["spreadsheetUrl"], int(props["sheetId"]),
                       int(props["gridProperties"]["rowCount"]))  # fmt: skip

    def row_count(self, spreadsheet_id: str, sheet_title: str) -> int:
        got = self._run(self._service().spreadsheets().get(spreadsheetId=spreadsheet_id))
        for sheet in got["sheets"]:
            if sheet["properties"]["title"] == sheet_title:
                return int(sheet["properties"]["gridProperties"]["rowCount"])
        raise ProviderError(f"no sheet {sheet_title!r} in {spreadsheet_id}", permanent=True)

    def add_rows(self, spreadsheet_id: str, sheet_id: int, count: int) -> None:
        request = {"appendDimension": {"sheetId": sheet_id, "dimension": "ROWS", "length": count}}
        body = {"requests": [request]}
        self._run(self._service().spreadsheets().batchUpdate(spreadsheetId=spreadsheet_id,
                                                             body=body))  # fmt: skip

    def write_rows(
        self, spreadsheet_id: str, sheet_title: str, rows: Mapping[int, Sequence[Any]]
    ) -> int:
        """Write each row (1-based number -> values) to its own fixed range, in one request: a
        repeated write lands on the same cells. Returns the number of rows written."""
        if not rows:
            return 0
        sheet = "'" + sheet_title.replace("'", "''") + "'"
        data = [
            {"range": f"{sheet}!A{first}:{column_letters(max(len(r) for r in block) - 1)}"
                      f"{first + len(block) - 1}",
             "values": [list(r) for r in block]}
            for first, block in runs(rows)
        ]  # fmt: skip
        body = {"valueInputOption": "RAW", "data": data}
        values = self._service().spreadsheets().values()
        self._run(values.batchUpdate(spreadsheetId=spreadsheet_id, body=body))
        return len(rows)

    def read(self, spreadsheet_id: str, range_: str) -> list[list[Any]]:
        values = self._service().spreadsheets().values()
        got = self._run(values.get(spreadsheetId=spreadsheet_id, range=range_))
        return list(got.get("values", []))
