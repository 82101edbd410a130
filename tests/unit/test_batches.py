"""Validating a batch submission: every field at fault is named, nothing else is accepted."""

import pytest

from sluice.domain.batches import fingerprint, item_ids, job_id_for, parse_batch
from sluice.domain.errors import Invalid, Unauthenticated
from sluice.problems import from_refusal

KINDS = {"kinds": ["chat", "staging"], "default_kind": "chat"}
LIMITS = {**KINDS, "max_batch_items": 5, "max_item_input_bytes": 100}


def fields_at_fault(payload) -> set[str]:
    with pytest.raises((Invalid, Unauthenticated)) as caught:
        parse_batch(payload, **LIMITS)
    assert from_refusal(caught.value).status == 400
    return {e.field for e in caught.value.errors}


def test_a_valid_batch_parses():
    batch = parse_batch(
        {"kind": "chat", "items": [{"input": "a"}, {"id": "x-1", "input": {}}]}, **LIMITS
    )
    assert batch.kind == "chat" and len(batch.items) == 2


def test_a_batch_names_a_declared_kind_or_gets_the_default():
    assert parse_batch({"items": [{"input": "a"}]}, **LIMITS).kind == "chat"
    assert parse_batch({"kind": "staging", "items": [{"input": "a"}]}, **LIMITS).kind == "staging"
    with pytest.raises(Invalid) as caught:
        parse_batch({"kind": "ocr", "items": [{"input": "a"}]}, **LIMITS)
    [error] = caught.value.errors
    assert error.field == "kind"
    assert error.message.endswith("unknown kind 'ocr': the kinds declared are chat, staging")
    # The same batch with its kind left out or named is the same submission.
    named = parse_batch({"kind": "chat", "items": [{"input": "a"}]}, **LIMITS)
    assert fingerprint(named) == fingerprint(parse_batch({"items": [{"input": "a"}]}, **LIMITS))


def test_every_field_at_fault_is_named():
    bad = {
        "kind": "",
        "items": [{"input": "ok"}, {"id": "bad id!", "input": "x"}, {}],
        "callback_url": "not a url",
        "extra": 1,
    }
    assert fields_at_fault(bad) == {"kind", "items.1.id", "items.2.input", "callback_url", "extra"}


def test_limits_on_count_size_and_duplicates():
    assert fields_at_fault({"kind": "chat", "items": []}) == {"items"}
    assert fields_at_fault({"kind": "chat", "items": [{"input": i} for i in range(6)]}) == {"items"}
    assert fields_at_fault({"kind": "chat", "items": [{"input": "x" * 200}]}) == {"items.0.input"}
    dupes = {"kind": "chat", "items": [{"id": "a", "input": 1}, {"id": "a", "input": 2}]}
    assert fields_at_fault(dupes) == {"body"}


@pytest.mark.parametrize("payload", [None, [], "text", 3])
def test_a_body_that_is_not_an_object_is_a_400(payload):
    assert fields_at_fault(payload)


def test_the_fingerprint_ignores_key_order_but_not_content():
    a = parse_batch({"kind": "chat", "items": [{"input": {"a": 1, "b": 2}}]}, **LIMITS)
    b = parse_batch({"items": [{"input": {"b": 2, "a": 1}}], "kind": "chat"}, **LIMITS)
    c = parse_batch({"kind": "chat", "items": [{"input": {"a": 1, "b": 3}}]}, **LIMITS)
    assert fingerprint(a) == fingerprint(b) != fingerprint(c)


def test_ids_are_fixed_by_the_idempotency_key_and_the_position():
    assert job_id_for("t", "key") == job_id_for("t", "key") != job_id_for("u", "key")
    assert job_id_for("t", None) != job_id_for("t", None)
    batch = parse_batch(
        {"kind": "chat", "items": [{"id": "mine", "input": 1}, {"input": 2}]}, **LIMITS
    )
    ids = item_ids("job", batch)
    assert ids[0] == "mine" and ids == item_ids("job", batch) and ids[1] != item_ids("j2", batch)[1]
