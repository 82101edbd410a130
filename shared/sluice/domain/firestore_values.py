"""What Firestore refuses to store, found before anything is written.

Firestore answers a value it cannot store with INVALID_ARGUMENT, and a client would read that as
an outage; worse, the refusal arrives half way through an intake that already wrote the job. So
every value a caller sends is checked here first, against Firestore's documented limits (and
what its emulator was seen to refuse):

- an array directly inside an array (`[[1, 2]]`; `[{"a": [1]}]` is fine);
- more than 20 maps and arrays nested in one field's value;
- a map key that is empty, reserved (`__name__`-like: two underscores at both ends), or makes a
  field path (`input.a.b`) over 1,500 bytes;
- an integer outside 64 bits, a number that is not finite, a string that is not UTF-8;
- a document id that is empty, `.`, `..`, reserved, contains `/` or is over 1,500 bytes.

`encoded_size` bounds the bytes a value takes in a write request, so that commits can be cut
below the request limit whatever the items hold.
"""

from __future__ import annotations

import math
import re
from typing import Any

MAX_DEPTH = 20
MAX_PATH_BYTES = 1500
MAX_ID_BYTES = 1500
_RESERVED = re.compile(r"^__.*__$", re.DOTALL)
# A field name Firestore writes in a path without backquotes; any other name is quoted.
_SIMPLE_NAME = re.compile(r"^[A-Za-z_][A-Za-z_0-9]*$")
_INT64 = (-(2**63), 2**63 - 1)


def _utf8(text: str) -> bytes | None:
    try:
        return text.encode()
    except UnicodeEncodeError:  # a lone surrogate, from a JSON escape such as "\ud800"
        return None


def _segment_bytes(name: bytes) -> int:
    simple = _SIMPLE_NAME.match(name.decode())
    return len(name) + (0 if simple else 2)


def refusal(value: Any, field: str, *, depth: int = 0) -> str | None:
    """Why Firestore would refuse `value` as the value of the document field `field`, or None.
    `depth`: maps and arrays already around the value (a value inside `params` has 1). The walk
    stops at the depth limit, so a value nested 100,000 deep costs no more than one of 21."""
    base = _utf8(field)
    if base is None:
        return "a key is not valid UTF-8"
    return _refusal(value, "", len(base), depth)


def _refusal(value: Any, where: str, path_bytes: int, depth: int) -> str | None:
    at = f" at {where}" if where else ""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int):
        if not _INT64[0] <= value <= _INT64[1]:
            return f"an integer outside 64 bits{at}"
        return None
    if isinstance(value, float):
        return None if math.isfinite(value) else f"a number that is not finite{at}"
    if isinstance(value, str):
        return None if _utf8(value) is not None else f"a string that is not valid UTF-8{at}"
    if isinstance(value, list | dict):
        if depth + 1 > MAX_DEPTH:
            return f"more than {MAX_DEPTH} maps and arrays nested{at}"
        if isinstance(value, list):
            for index, inner in enumerate(value):
                if isinstance(inner, list):
                    return f"an array directly inside an array at {where}[{index}]"
                found = _refusal(inner, f"{where}[{index}]", path_bytes, depth + 1)
                if found:
                    return found
            return None
        for key, inner in value.items():
            if not isinstance(key, str):
                return f"a key that is not text{at}"
            name = _utf8(key)
            if name is None:
                return f"a key that is not valid UTF-8{at}"
            if not name:
                return f"an empty key{at}"
            if _RESERVED.match(key):
                return f"the key {key[:40]!r}{at}: keys starting and ending with __ are reserved"
            inner_path = path_bytes + 1 + _segment_bytes(name)
            if inner_path > MAX_PATH_BYTES:
                return f"a key{at} making a field path over {MAX_PATH_BYTES} bytes"
            inner_where = f"{where}.{key[:40]}" if where else key[:40]
            found = _refusal(inner, inner_where, inner_path, depth + 1)
            if found:
                return found
        return None
    return None


def document_id_refusal(doc_id: str) -> str | None:
    """Why Firestore would refuse `doc_id` as a document id, or None."""
    encoded = _utf8(doc_id)
    if encoded is None:
        return "not valid UTF-8"
    if not encoded or doc_id in (".", ".."):
        return "empty, '.' or '..'"
    if "/" in doc_id:
        return "contains '/'"
    if _RESERVED.match(doc_id):
        return "reserved (starts and ends with __)"
    if len(encoded) > MAX_ID_BYTES:
        return f"over {MAX_ID_BYTES} bytes"
    return None


def _varint(n: int) -> int:
    return max(1, (n.bit_length() + 6) // 7)


# A field's tag takes 1 byte up to field number 15, 2 beyond (`Value.string_value` is 17).
_TAG = 2


def _field(payload: int) -> int:
    """A length-delimited protobuf field: its tag, its length, its payload."""
    return _TAG + _varint(payload) + payload


def encoded_size(value: Any) -> int:
    """The bytes `value` takes as a Firestore `Value` in a write request (protobuf), not counting
    the field that holds it: an upper bound, within a few bytes a value. For a value Firestore
    accepts (see `refusal`), so its recursion is at most 20 deep."""
    if value is None or isinstance(value, bool):
        return _TAG + 1
    if isinstance(value, int):
        return _TAG + 10  # a negative int64 is always 10 bytes; a bound is enough
    if isinstance(value, float):
        return _TAG + 8
    if isinstance(value, str):
        return _field(len(value.encode()))
    if isinstance(value, list):
        return _field(sum(_field(encoded_size(v)) for v in value))
    if isinstance(value, dict):
        return _field(sum(_field(entry_size(k, v)) for k, v in value.items()))
    return _field(len(str(value).encode()))


def entry_size(key: str, value: Any) -> int:
    """One `key: value` of a map (a document's fields are one too): key field and value field."""
    return _field(len(key.encode())) + _field(encoded_size(value))
