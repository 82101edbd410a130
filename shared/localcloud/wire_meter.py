"""A counting gRPC proxy in front of the emulators: what Firestore and Pub/Sub would bill whoever
is pointed at it (`FIRESTORE_EMULATOR_HOST`, `PUBSUB_EMULATOR_HOST`).

Neither emulator keeps such counts, and a count kept by the code being measured would be its own
claim; these are read off the wire. Messages pass through as bytes; only what a count needs is
decoded: the documents a read answers with, the writes of a commit that succeeded, the messages
of a publish that succeeded.

As billed (Firestore and Pub/Sub pricing pages): a document asked for is a read whether it is
found or not, a query's documents are a read each (an aggregation one per 1,000 index entries);
each document a commit changes is a write, or a delete; a publish request is billed for its
bytes, at least 1,000.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass
from typing import Any

import grpc
from google.cloud.firestore_v1.types import (
    BatchGetDocumentsResponse,
    BatchWriteRequest,
    CommitRequest,
    RunQueryResponse,
)
from google.pubsub_v1.types import PublishRequest

FIRESTORE = "/google.firestore.v1.Firestore/"
PUBSUB = "/google.pubsub.v1."
# Pub/Sub bills every publish, push and pull request for at least this many bytes.
MIN_BILLED_BYTES = 1000


def documents_in(method: str, response: bytes) -> int:
    if method == FIRESTORE + "GetDocument":
        return 1
    if method == FIRESTORE + "BatchGetDocuments":
        # A document asked for is billed whether it was found or not.
        answer = BatchGetDocumentsResponse.pb().FromString(response)
        return int(answer.HasField("found") or answer.HasField("missing"))
    if method == FIRESTORE + "RunQuery":
        return int(RunQueryResponse.pb().FromString(response).HasField("document"))
    if method == FIRESTORE + "RunAggregationQuery":
        return 1  # billed as one read per up to 1,000 index entries counted
    return 0


def changes_in(method: str, request: bytes) -> Counter[str]:
    """What a request would bill once it succeeds: writes, deletes, commits, publishes."""
    found: Counter[str] = Counter()
    if method in (FIRESTORE + "Commit", FIRESTORE + "BatchWrite"):
        kind = CommitRequest if method.endswith("Commit") else BatchWriteRequest
        writes = kind.pb().FromString(request).writes
        found["commits"] += 1
        found["deletes"] += sum(1 for w in writes if w.WhichOneof("operation") == "delete")
        found["writes"] += sum(1 for w in writes if w.WhichOneof("operation") != "delete")
    elif method == PUBSUB + "Publisher/Publish":
        found["publish_requests"] += 1
        found["messages_published"] += len(PublishRequest.pb().FromString(request).messages)
        found["publish_bytes_billed"] += max(MIN_BILLED_BYTES, len(request))
    return found


@dataclass(frozen=True)
class Usage:
    """What went through a meter: documents read, written and deleted, commits, and Pub/Sub
    publishes (requests, messages and billed bytes)."""

    reads: int = 0
    writes: int = 0
    deletes: int = 0
    commits: int = 0
    publish_requests: int = 0
    messages_published: int = 0
    publish_bytes_billed: int = 0


class WireMeter(grpc.GenericRpcHandler):
    def __init__(self, firestore_host: str, pubsub_host: str | None = None) -> None:
        self._firestore = grpc.insecure_channel(firestore_host)
        self._pubsub = grpc.insecure_channel(pubsub_host) if pubsub_host else None
        self._lock = threading.Lock()
        self._counts: Counter[str] = Counter()
        self.calls: dict[str, int] = {}
        self._server = grpc.server(futures.ThreadPoolExecutor(16), handlers=[self])
        self.port = self._server.add_insecure_port("127.0.0.1:0")

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def env(self) -> dict[str, str]:
        """The emulator variables that point Google's clients at this meter."""
        return {"FIRESTORE_EMULATOR_HOST": self.host, "PUBSUB_EMULATOR_HOST": self.host}

    @property
    def documents_read(self) -> int:
        return self.usage().reads

    def usage(self) -> Usage:
        with self._lock:
            counts = dict(self._counts)
        return Usage(**{k: counts.get(k, 0) for k in Usage.__dataclass_fields__})

    def start(self) -> None:
        self._server.start()

    def stop(self) -> None:
        self._server.stop(grace=None)
        self._firestore.close()
        if self._pubsub is not None:
            self._pubsub.close()

    def reset(self) -> None:
        with self._lock:
            self._counts = Counter()
            self.calls = {}

    def _add(self, counts: Counter[str]) -> None:
        with self._lock:
            self._counts.update(counts)

    def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        method = details.method
        channel = self._firestore if method.startswith(FIRESTORE) else self._pubsub
        if channel is None:
            return None
        # Every method as a stream of bytes each way: on the wire unary and streaming calls
        # are framed alike, so one pass-through serves them all.
        upstream = channel.stream_stream(method)
        name = method.rsplit("/", 1)[-1]

        def forward(requests: Iterator[bytes], context: grpc.ServicerContext) -> Iterator[bytes]:
            metadata = [(k, v) for k, v in context.invocation_metadata() if k != "user-agent"]
            pending: Counter[str] = Counter()

            def counted(stream: Iterator[bytes]) -> Iterator[bytes]:
                for request in stream:
                    pending.update(changes_in(method, request))
                    yield request

            with self._lock:
                self.calls[name] = self.calls.get(name, 0) + 1
            try:
                for response in upstream(counted(requests), metadata=metadata):
                    read = documents_in(method, response)
                    if read:
                        self._add(Counter(reads=read))
                    yield response
            except grpc.RpcError as error:
                context.abort(error.code(), error.details() or "")
            # Only what succeeded is billed: a commit refused for its precondition writes nothing.
            self._add(pending)

        return grpc.stream_stream_rpc_method_handler(forward)

    def __enter__(self) -> WireMeter:
        self.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()
