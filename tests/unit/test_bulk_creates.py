"""Items written in bulk are stored exactly as the Firestore client would store them."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from google.cloud import firestore
from google.cloud.firestore_v1 import GeoPoint, _helpers
from google.cloud.firestore_v1.types import Value
from hypothesis import given, settings
from hypothesis import strategies as st

from sluice.adapters.bulk_creates import add_creates, encode_value

stored_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.binary(max_size=20)
    | st.floats(allow_nan=False) | st.text(max_size=30)
    | st.datetimes(timezones=st.just(UTC) | st.just(timezone(timedelta(hours=-5)))),
    lambda inner: st.lists(inner, max_size=4)
    | st.dictionaries(st.text(min_size=1, max_size=8), inner, max_size=4),
    max_leaves=30,
)  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(value=stored_values)
def test_a_value_encodes_as_the_client_encodes_it(value):
    assert encode_value(value) == Value.pb(_helpers.encode_value(value))


def test_a_batch_of_creates_is_the_batch_the_client_would_commit(monkeypatch):
    monkeypatch.setenv("FIRESTORE_EMULATOR_HOST", "127.0.0.1:1")  # builds requests, sends none
    db = firestore.Client(project="p")
    at = datetime(2026, 12, 7, 22, 0, tzinfo=UTC)
    item = {"input": {"text": "doc", "tags": ["a", 1]}, "state": "queued", "created_at": at}
    docs = [(db.document(f"jobs/j/items/i{n}"), {"index": n, **item}) for n in range(3)]
    ours, theirs = db.batch(), db.batch()
    add_creates(ours, docs)
    for ref, doc in docs:
        theirs.create(ref, doc)
    assert [type(w).pb(w) for w in ours._write_pbs] == [type(w).pb(w) for w in theirs._write_pbs]


@pytest.mark.parametrize("value", [{1, 2}, GeoPoint(1.0, 2.0), firestore.SERVER_TIMESTAMP])
def test_a_value_it_does_not_encode_is_refused_not_stored_differently(value):
    with pytest.raises(TypeError, match="does not encode"):
        encode_value({"a": value})
