"""The clients of Google's services and of the outside HTTP services, as every function builds
them. sluice.bootstrap builds one of each per process, on first use, and shares it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import httpx
from google.cloud import firestore

from sluice.adapters.deadlines import DeadlineTransport

if TYPE_CHECKING:
    from google.cloud import pubsub_v1  # type: ignore[attr-defined]


def firestore_client(project: str, database: str = "(default)") -> firestore.Client:
    return firestore.Client(project=project, database=database)


def publisher_client() -> pubsub_v1.PublisherClient:
    # Imported here: a function that never publishes (sheets-writer, backfill) starts without
    # the Pub/Sub client library (bench/cold_start.py).
    from google.cloud import pubsub_v1  # type: ignore[attr-defined]

    # Publisher publishes through the client's generated Publish call, not its batching
    # publish() (sluice.adapters.publisher says why), so no batch settings apply.
    return pubsub_v1.PublisherClient()


def http_client() -> httpx.Client:
    # One pool for every outside HTTP service; each adapter gives each call its provider's total
    # deadline (sluice.adapters.deadlines.within), which the transport holds every read to.
    limits = httpx.Limits(max_connections=100, max_keepalive_connections=20)
    return httpx.Client(
        transport=DeadlineTransport(limits=limits), timeout=httpx.Timeout(30.0, connect=5.0)
    )
