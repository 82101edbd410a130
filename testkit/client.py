"""The steps a client takes on a deployed local cloud: a CRM submitting a batch and polling it, Meta
posting to the webhook, an operator reading a function's log."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import httpx

from localcloud.cloud import Deployment

T = TypeVar("T")


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def logs_of(deployment: Deployment, function: str) -> str:
    return Path(deployment.functions[function].log_path).read_text()


def webhook(d: Deployment) -> str:
    return d.url("webhook-ingest") + "/whatsapp/webhook"


def submit(
    http: httpx.Client,
    d: Deployment,
    key: str,
    n: int = 0,
    *,
    inputs: list | None = None,
    **extra: object,
) -> dict:
    """Submit a batch of `inputs`, or of n documents `{"text": "doc i"}`."""
    inputs = inputs if inputs is not None else [{"text": f"doc {i}"} for i in range(n)]
    body: dict[str, Any] = {"kind": "chat", "items": [{"input": x} for x in inputs]}
    body.update(extra)
    r = http.post(d.url("webhook-ingest") + "/v1/batches", json=body, headers=bearer(key))
    assert r.status_code == 202, r.text
    return r.json()


def wait_done(http: httpx.Client, url: str, key: str, timeout: float = 120) -> list[dict]:
    """Poll a batch's status until it completes; every status seen, in order."""
    polls = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = http.get(url, headers=bearer(key)).json()
        polls.append(status)
        if status["state"] == "completed":
            return polls
        time.sleep(0.3)
    raise AssertionError(f"batch not completed: {polls[-1]}")


def items_of(http: httpx.Client, status_url: str, key: str, **params: Any) -> list[dict]:
    """Every item of a batch, read page by page as a client would."""
    items, token = [], None
    while True:
        query = {**params, "page_size": 40, **({"page_token": token} if token else {})}
        page = http.get(status_url + "/items", params=query, headers=bearer(key)).json()
        items += page["items"]
        token = page["next_page_token"]
        if token is None:
            return items


def wait_for(
    predicate: Callable[[], T], timeout: float = 60, what: str = "condition", every: float = 0.2
) -> T:
    """The first truthy value of `predicate`, asked every `every` seconds until `timeout`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out waiting for {what}")
