"""What Firestore refuses is refused before anything is written, and commits fit its limits."""

from __future__ import annotations

import pytest
from google.cloud.firestore_v1 import _helpers
from google.cloud.firestore_v1.types import Value
from hypothesis import given, settings
from hypothesis import strategies as st

from sluice.adapters.request_parts import request_ranges
from sluice.domain.batches import parse_batch
from sluice.domain.errors import Invalid, Unauthenticated
from sluice.domain.firestore_values import (
    MAX_DEPTH,
    document_id_refusal,
    encoded_size,
    refusal,
)
from sluice.problems import from_refusal

LIMITS = {"kinds": ["chat"], "default_kind": "chat", "max_batch_items": 5,
          "max_item_input_bytes": 100_000, "max_params_bytes": 1000}  # fmt: skip


def nested(depth: int) -> object:
    value: object = 1
    for _ in range(depth):
        value = {"a": value}
    return value


def errors_of(payload: dict) -> dict[str, str]:
    with pytest.raises((Invalid, Unauthenticated)) as caught:
        parse_batch(payload, **LIMITS)
    assert from_refusal(caught.value).status == 400
    return {e.field: e.message for e in caught.value.errors}


@pytest.mark.parametrize(
    ("value", "says"),
    [
        ([[1, 2]], "array directly inside an array at [0]"),
        ({"a": [3, [4]]}, "array directly inside an array at a[1]"),
        (nested(MAX_DEPTH + 1), "more than 20 maps and arrays"),
        ({"x": {"__name__": 1}}, "reserved"),
        ({"": 1}, "empty key"),
        ({"k" * 1500: 1}, "field path over 1500 bytes"),
        (2**63, "outside 64 bits"),
        (float("inf"), "not finite"),
        ("\ud800", "not valid UTF-8"),
        ({"\ud800": 1}, "not valid UTF-8"),
    ],
)
def test_what_firestore_refuses_is_a_400_naming_the_item_and_field(value, says):
    errors = errors_of({"kind": "chat", "items": [{"input": 1}, {"input": value}]})
    assert list(errors) == ["items.1.input"]
    assert (
        says in errors["items.1.input"] and "Firestore cannot store it" in errors["items.1.input"]
    )
    in_params = errors_of({"kind": "chat", "items": [{"input": 1}], "params": {"p": value}})
    assert says.split(" at ")[0] in in_params["params"]


def test_what_firestore_stores_passes():
    fine = [{"a": [1]}, nested(MAX_DEPTH), {"a__x__": 1, "__a": 2, "a.b": 3}, -(2**63), "é"]
    for value in fine:
        assert refusal(value, "input") is None, value
    batch = parse_batch({"kind": "chat", "items": [{"input": v} for v in fine]}, **LIMITS)
    assert len(batch.items) == len(fine)
    # params is a field of its own, its map the first of the 20 levels.
    parse_batch({"kind": "chat", "items": [{"input": 1}], "params": nested(20)}, **LIMITS)
    assert "params" in errors_of({"kind": "chat", "items": [{"input": 1}], "params": nested(21)})


def test_a_value_nested_far_too_deep_is_refused_without_recursing_through_it():
    deep: object = 1
    for _ in range(100_000):
        deep = [deep] if isinstance(deep, dict) else {"a": deep}
    assert "more than 20" in (refusal(deep, "input") or "")


def test_params_over_their_limit_are_a_400():
    errors = errors_of({"kind": "chat", "items": [{"input": 1}], "params": {"p": "x" * 2000}})
    assert errors["params"] == "Value error, params are larger than 1000 bytes"


@pytest.mark.parametrize("doc_id", ["", ".", "..", "__x__", "a/b", "x" * 1501, "\ud800"])
def test_ids_firestore_refuses(doc_id):
    assert document_id_refusal(doc_id)


@pytest.mark.parametrize("doc_id", ["abc", "wa-100-20250101", "x" * 1500, "a.b", "_x_"])
def test_ids_firestore_takes(doc_id):
    assert document_id_refusal(doc_id) is None


def values_in(value: object) -> int:
    if isinstance(value, dict):
        return 1 + sum(values_in(v) + 1 for v in value.values())
    if isinstance(value, list):
        return 1 + sum(values_in(v) for v in value)
    return 1


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=30),
    lambda inner: st.lists(st.dictionaries(st.text(min_size=1, max_size=8), inner, max_size=4)
                           | st.none() | st.integers() .filter(lambda i: abs(i) < 2**63),
                           max_size=5)
    | st.dictionaries(st.text(min_size=1, max_size=8), inner, max_size=4),
    max_leaves=30,
)  # fmt: skip


@settings(max_examples=200, deadline=None)
@given(value=json_values)
def test_the_encoded_size_bounds_the_client_library_s_encoding(value):
    # The library's own encoding of the value, as it goes into a write request.
    exact = Value.pb(_helpers.encode_value(value)).ByteSize()
    # Never below it, and at most a few bytes a value above it (each int counted as 10 bytes).
    assert exact <= encoded_size(value) <= exact + 14 * values_in(value)


def test_commits_are_cut_by_count_and_by_bytes():
    assert request_ranges([1] * 1200, max_count=500, max_bytes=10**9) == [
        range(0, 500), range(500, 1000), range(1000, 1200)
    ]  # fmt: skip
    assert request_ranges([40, 40, 40, 100, 10], max_count=500, max_bytes=100) == [
        range(0, 2), range(2, 3), range(3, 4), range(4, 5)
    ]  # fmt: skip
    assert request_ranges([], max_count=500, max_bytes=100) == []
