"""The local Eventarc router: a delivery waiting for a retry is dropped once its project's
functions are gone, instead of retrying a dead function and holding a worker; a failed delivery
comes again with the same event id, and never while an earlier attempt is still running."""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler

import httpx

from localcloud.processes import BackgroundServer
from localcloud.triggers import TriggerRouter


class Failing(BackgroundServer):
    """A function that answers 500 to every delivery (after `slow` seconds), counting them, the
    event ids it was sent, and the most attempts it was handling at once."""

    def __init__(self, slow: float = 0.0) -> None:
        self.hits = 0
        self.hit = threading.Event()
        self.ids: list[str] = []
        self.running = self.most_at_once = 0
        lock = threading.Lock()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with lock:
                    owner.hits += 1
                    owner.ids.append(self.headers.get("ce-id", ""))
                    owner.running += 1
                    owner.most_at_once = max(owner.most_at_once, owner.running)
                time.sleep(slow)
                with lock:
                    owner.running -= 1
                owner.hit.set()
                self.send_response(500)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: object) -> None:
                pass

        super().__init__(Handler)


def until(check, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_a_retrying_delivery_is_dropped_when_its_project_is_torn_down():
    function, router = Failing(), TriggerRouter()
    function.start()
    router.start()
    try:
        router.route("p", "t", function.url, max_backoff=10)
        sent = httpx.post(router.url + "/functions/projects/p/triggers/t", content=b"e30=")
        assert sent.status_code == 200  # the emulator's post is answered at once
        assert function.hit.wait(10)
        router.unroute("p")
        until(lambda: router.count("p", "t", "dropped") == 1)
        hits = function.hits
        time.sleep(1.0)  # past the next retries' backoff (0.2 s, 0.4 s)
        assert function.hits == hits <= 2
        assert router.count("p", "t", "abandoned") == 0
        # A project that is gone gets nothing new either.
        httpx.post(router.url + "/functions/projects/p/triggers/t", content=b"e30=")
        assert router.count("p", "t", "unrouted") == 1
    finally:
        router.stop()
        function.stop()


def test_a_failed_delivery_comes_again_with_its_event_id_one_attempt_at_a_time():
    # Slower than the first backoffs (0.2 s, 0.4 s): a retry sent before the attempt ended would
    # overlap it. The leases of sheets-writer and backfill rely on this.
    function, router = Failing(slow=0.5), TriggerRouter()
    function.start()
    router.start()
    try:
        router.route("p", "t", function.url, max_backoff=0.3)
        headers = {"ce-id": "event-1", "ce-type": "google.cloud.firestore.document.v1.written"}
        sent = httpx.post(router.url + "/functions/projects/p/triggers/t", content=b"e30=",
                          headers=headers)  # fmt: skip
        assert sent.status_code == 200
        until(lambda: function.hits >= 4)
        router.unroute("p")
        until(lambda: router.count("p", "t", "dropped") == 1)
        assert set(function.ids) == {"event-1"}
        assert function.most_at_once == 1
    finally:
        router.stop()
        function.stop()
