"""A counting gRPC proxy in front of the Firestore emulator: documents read, as Firestore bills
them, by whoever is pointed at it (`FIRESTORE_EMULATOR_HOST`).

The emulator keeps no such count, and a count kept by the code being measured would be its own
claim; this one is read off the wire. Messages pass through as bytes; only the responses of the
read methods are decoded, to count the documents they carry.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent import futures
from typing import Any

import grpc
from google.cloud.firestore_v1.types import BatchGetDocumentsResponse, RunQueryResponse

SERVICE = "/google.firestore.v1.Firestore/"


def documents_in(method: str, response: bytes) -> int:
    if method == SERVICE + "GetDocument":
        return 1
    if method == SERVICE + "BatchGetDocuments":
        # A document asked for is billed whether it was found or not.
        answer = BatchGetDocumentsResponse.pb().FromString(response)
        return int(answer.HasField("found") or answer.HasField("missing"))
    if method == SERVICE + "RunQuery":
        return int(RunQueryResponse.pb().FromString(response).HasField("document"))
    if method == SERVICE + "RunAggregationQuery":
        return 1  # billed as one read per up to 1,000 index entries counted
    return 0


class FirestoreMeter(grpc.GenericRpcHandler):
    def __init__(self, emulator_host: str) -> None:
        self._upstream = grpc.insecure_channel(emulator_host)
        self._lock = threading.Lock()
        self.documents_read = 0
        self.calls: dict[str, int] = {}
        self._server = grpc.server(futures.ThreadPoolExecutor(8), handlers=[self])
        self.port = self._server.add_insecure_port("127.0.0.1:0")

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        self._server.start()

    def stop(self) -> None:
        self._server.stop(grace=None)
        self._upstream.close()

    def reset(self) -> None:
        with self._lock:
            self.documents_read = 0
            self.calls = {}

    def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler:
        method = details.method
        # Every method as a stream of bytes each way: on the wire unary and streaming calls
        # are framed alike, so one pass-through serves them all.
        upstream = self._upstream.stream_stream(method)

        def forward(requests: Iterator[bytes], context: grpc.ServicerContext) -> Iterator[bytes]:
            metadata = [(k, v) for k, v in context.invocation_metadata() if k != "user-agent"]
            with self._lock:
                self.calls[method.removeprefix(SERVICE)] = (
                    self.calls.get(method.removeprefix(SERVICE), 0) + 1
                )
            try:
                for response in upstream(requests, metadata=metadata):
                    read = documents_in(method, response)
                    if read:
                        with self._lock:
                            self.documents_read += read
                    yield response
            except grpc.RpcError as error:
                context.abort(error.code(), error.details() or "")

        return grpc.stream_stream_rpc_method_handler(forward)

    def __enter__(self) -> FirestoreMeter:
        self.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()
