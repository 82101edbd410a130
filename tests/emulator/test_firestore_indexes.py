"""Every query the adapters send has the index it needs in the cloud, declared in terraform/.

The Firestore emulator serves any query without an index, so a new compound query passes every
local test and fails in the cloud. This test closes that gap in three steps:

1. It finds, in the source of `shared/sluice/adapters/`, every function that builds a filtered,
   ordered or collection-group query (a call to `.where`, `.order_by`, `collection_group`, a
   cursor, or a query declared in `queries.yaml`), and requires each one to be run in step 2:
   a new query method fails here until it is added to `RUNS`.
2. It runs each of them on the emulator (the real store, nothing stubbed) and records the
   structured queries actually sent, at the Firestore client's RunQuery and RunAggregationQuery
   calls, each with the adapter function that sent it.
3. It applies Firestore's index rules to each recorded query (testkit/firestore_indexes.py) and
   checks it against the indexes Terraform declares, as testkit/hcl.py evaluates them: a
   compound query with no declared index fails, naming the index it needs.

Reading queries off the wire, rather than off the declaration, is what catches a query an adapter
builds by hand.
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from google.cloud.firestore_v1.base_query import FieldFilter
from google.cloud.firestore_v1.services.firestore.client import FirestoreClient
from google.cloud.firestore_v1.types import StructuredQuery

import sluice.adapters
from sluice.adapters.callbacks_store import CallbackStore
from sluice.adapters.conversations_store import ConversationStore
from sluice.adapters.exports_store import ExportStore
from sluice.adapters.tenants_store import TenantStore
from testkit.firestore_indexes import Indexes, unserved
from testkit.hcl import Config
from testkit.stores import stores as job_stores
from testkit.terraform import TERRAFORM, VARIABLES

ADAPTERS = Path(sluice.adapters.__file__).parent
# The builder of declared queries: its callers are the ones that send them.
BUILDER = ADAPTERS / "queries.py"
QUERY_CALLS = {"where", "order_by", "collection_group", "start_at", "start_after", "end_at",
               "end_before", "limit_to_last"}  # fmt: skip
T0 = datetime(2026, 11, 21, tzinfo=UTC)


def query_functions() -> set[str]:
    """`Class.method` (or `function`) of every adapter function whose source builds a query."""
    found = set()
    for path in sorted(ADAPTERS.glob("*.py")):
        if path == BUILDER:
            continue
        tree = ast.parse(path.read_text())
        declared = {
            target.id
            for node in tree.body
            if isinstance(node, ast.Assign) and isinstance(node.value, ast.Call)
            and getattr(node.value.func, "id", None) == "declared"
            for target in node.targets if isinstance(target, ast.Name)
        }  # fmt: skip
        tops = [(n.name, n) for n in tree.body if isinstance(n, ast.FunctionDef)]
        tops += [(f"{c.name}.{n.name}", n) for c in tree.body if isinstance(c, ast.ClassDef)
                 for n in c.body if isinstance(n, ast.FunctionDef)]  # fmt: skip
        for name, function in tops:
            for call in ast.walk(function):
                if not isinstance(call, ast.Call) or not isinstance(call.func, ast.Attribute):
                    continue
                receiver = call.func.value
                if call.func.attr in QUERY_CALLS or (
                    call.func.attr == "on" and isinstance(receiver, ast.Name)
                    and receiver.id in declared
                ):  # fmt: skip
                    found.add(name)
    return found


def sender() -> str:
    """The adapter function running now (nested functions count as the one they are in)."""
    frame = sys._getframe(2)
    while frame is not None:
        path = Path(frame.f_code.co_filename)
        if path.parent == ADAPTERS and path != BUILDER:
            return frame.f_code.co_qualname.split(".<locals>")[0]
        frame = frame.f_back  # type: ignore[assignment]
    return "(not an adapter)"


@pytest.fixture
def sent(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, StructuredQuery]]:
    """Each structured query sent to Firestore while the test runs, with who sent it."""
    recorded: list[tuple[str, StructuredQuery]] = []

    def watch(method: str, field: str, nested: bool) -> None:
        original = getattr(FirestoreClient, method)

        def call(self: Any, request: Any = None, **kwargs: Any) -> Any:
            query = request[field] if isinstance(request, dict) else getattr(request, field)
            recorded.append((sender(), query.structured_query if nested else query))
            return original(self, request=request, **kwargs)

        monkeypatch.setattr(FirestoreClient, method, call)

    watch("run_query", "structured_query", nested=False)
    watch("run_aggregation_query", "structured_aggregation_query", nested=True)
    return recorded


@pytest.fixture
def stores(db) -> dict[str, Any]:
    tenants = TenantStore(db)
    tenants.create("acme")
    return {
        **vars(job_stores(db, shards=2)),
        "callbacks": CallbackStore(db),
        "exports": ExportStore(db),
        "conversations": ConversationStore(db),
        "tenants": tenants,
    }


def _drain(values: Iterator[Any]) -> None:
    for _ in values:
        pass


# How to make each query function send its queries: through its public method, with each
# variant (a filter given or not, a cursor or none).
RUNS: dict[str, Callable[[dict[str, Any]], Any]] = {
    "TenantStore._holding": lambda s: (
        s["tenants"].by_key_hash("h"),
        s["tenants"].by_phone("1"),
    ),
    "IntakeStore.unfinished_intakes": lambda s: s["intake"].unfinished_intakes(),
    "ItemStore.list_items": lambda s: [
        s["items"].list_items("job", state=state, limit=10, after=after)
        for state in (None, "failed")
        for after in (None, "item-1")
    ],
    "ItemStore.succeeded_before": lambda s: [
        s["items"].succeeded_before("job", T0, after=after, limit=10)
        for after in (None, {"finished_at": T0, "item_id": "item-1"})
    ],
    "ItemStore.items_in": lambda s: _drain(s["items"].items_in("job", "running")),
    "ItemStore.queued_untouched_since": lambda s: s["items"].queued_untouched_since("job", T0),
    "JobStore._open_batches": lambda s: (s["jobs"].open_batches(), s["jobs"].tenant_backlogs()),
    "CallbackStore.callbacks_to_send_again": lambda s: s["callbacks"].callbacks_to_send_again(
        now=T0, quiet=T0 - T0
    ),
    "ItemStore.transition_items": lambda s: s["items"].transition_items(
        "job", "failed", lambda item: None
    ),
    "ExportStore.unwritten": lambda s: s["exports"].unwritten("job", 10),
    "ExportStore.stranded_rows": lambda s: s["exports"].stranded_rows(now=T0, queued_before=T0),
    "ExportStore.stalled_backfills": lambda s: s["exports"].stalled_backfills(
        now=T0, idle_since=T0
    ),
    "ConversationStore.waiting_heads": lambda s: s["conversations"].waiting_heads(since_before=T0),
    "TenantStore.list": lambda s: s["tenants"].list(),
    "TenantStore.add_phone": lambda s: s["tenants"].add_phone("acme", "15550001"),
}


def test_every_adapter_function_that_builds_a_query_is_run_here():
    assert set(RUNS) == query_functions(), (
        "add each new query function to RUNS, so that the queries it sends are checked"
    )


def test_every_query_the_adapters_send_has_a_declared_index(stores, sent):
    for run in RUNS.values():
        run(stores)
    senders = {who for who, _ in sent}
    # Each function sent its queries itself (none ran through another's path only).
    assert senders == set(RUNS), sorted(senders ^ set(RUNS))
    indexes = Indexes.of(Config(TERRAFORM, VARIABLES))
    problems = [f"{who}: {p}" for who, query in sent for p in unserved([query], indexes)]
    assert not problems, "\n".join(problems)


def test_a_compound_query_sent_without_a_declared_index_fails_the_check(db, sent):
    # As an adapter would send it by hand: a job's failed items, latest first.
    items = db.collection("jobs").document("job").collection("items")
    failed = items.where(filter=FieldFilter("state", "==", "failed"))
    list(failed.order_by("finished_at", direction="DESCENDING").limit(5).stream())
    ((_, query),) = sent
    (problem,) = unserved([query], Indexes.of(Config(TERRAFORM, VARIABLES)))
    assert "items [state equal] order by [finished_at des]" in problem
    assert "composite index (COLLECTION)" in problem
