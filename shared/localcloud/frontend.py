"""Cloud Run's front end for a local function: one stable URL in front of its instances.

In the cloud a dead instance never shows as a refused connection: the front end holds the request
while a new instance starts, and answers 503 if none comes up in time; a request whose instance
dies under it gets a 503 too. The Pub/Sub emulator, pushing straight at a restarting process, sees
"connection refused" instead, and stalls the subscription. This proxy gives it Cloud Run's answers.
"""

from __future__ import annotations

import math
import threading
import time
from http.server import BaseHTTPRequestHandler

import httpx

from localcloud.processes import BackgroundServer

# How long a request waits for an instance to (re)start before it is answered 503.
STARTUP_WAIT_SECONDS = 30.0
HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "upgrade", "host",
              "proxy-connection", "content-length"}  # fmt: skip


class Frontend(BackgroundServer):
    def __init__(self, backend_port: int, *, port: int = 0, timeout: float = 600.0) -> None:
        self.backend = f"http://127.0.0.1:{backend_port}"
        self._http = httpx.Client(
            timeout=httpx.Timeout(timeout, connect=1.0),
            # Idle connections are dropped well before gunicorn's own keep-alive (2 s) closes
            # them: a request sent on a connection the server is closing at that moment is lost
            # ("server disconnected"), which Cloud Run's front end never shows its callers.
            limits=httpx.Limits(
                max_connections=200, max_keepalive_connections=50, keepalive_expiry=1.0
            ),
        )
        # What Cloud Run bills a function for (request-based billing): its requests, and the
        # time it has one in flight, each busy stretch rounded up to 100 ms.
        self.requests = 0
        self.busy_seconds = 0.0
        self._in_flight = 0
        self._busy_since = 0.0
        self._meter = threading.Lock()
        super().__init__(self._handler(), port=port)

    def _begin(self) -> None:
        with self._meter:
            self.requests += 1
            if self._in_flight == 0:
                self._busy_since = time.monotonic()
            self._in_flight += 1

    def _end(self) -> None:
        with self._meter:
            self._in_flight -= 1
            if self._in_flight == 0:
                busy = time.monotonic() - self._busy_since
                self.busy_seconds += math.ceil(busy * 10) / 10

    def stop(self) -> None:
        super().stop()
        self._http.close()

    def forward(
        self, method: str, path: str, headers: dict[str, str], body: bytes
    ) -> tuple[int, list[tuple[str, str]], bytes]:
        deadline = time.monotonic() + STARTUP_WAIT_SECONDS
        while True:
            if self._http.is_closed:
                # The deployment is stopping: requests still arriving get what Cloud Run gives
                # a deleted service's callers.
                return 503, [], b"the function is shutting down"
            try:
                r = self._http.request(method, self.backend + path, headers=headers, content=body)
                out = [(k, v) for k, v in r.headers.items() if k.lower() not in HOP_BY_HOP]
                return r.status_code, out, r.content
            except httpx.ConnectError:
                # No instance is listening (yet): wait for one, as Cloud Run does.
                if time.monotonic() > deadline:
                    return 503, [], b"no instance became available"
                time.sleep(0.1)
            except httpx.HTTPError:
                # The instance died while handling the request.
                return 503, [], b"the instance handling the request was lost"
            except RuntimeError:
                if not self._http.is_closed:
                    raise
                # Closed between the check above and the request.

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        frontend = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _proxy(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
                frontend._begin()
                try:
                    status, out, content = frontend.forward(self.command, self.path, headers, body)
                finally:
                    frontend._end()
                self.send_response(status)
                for key, value in out:
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(content)))
                self.end_headers()
                self.wfile.write(content)

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _proxy

            def log_message(self, format: str, *args: object) -> None:
                pass

        return Handler
