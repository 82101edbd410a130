"""A CRM batch submission: its shape, its limits, and the ids it gets.

Validation happens here, before anything is written, so that bad input changes nothing and the
caller is told every field at fault at once.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Sequence
from typing import Annotated, Any

from pydantic import (
    AnyHttpUrl,
    BaseModel,
    ConfigDict,
    Field,
    JsonValue,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from sluice.domain.callbacks import callback_url_refusal
from sluice.domain.errors import FieldError, Invalid
from sluice.domain.firestore_values import refusal

ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"
Name = Annotated[str, Field(pattern=ID_PATTERN)]


class ItemIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: Name | None = None
    input: JsonValue

    @field_validator("input", mode="before")
    @classmethod
    def _storable_input(cls, value: Any) -> Any:
        # Before the JSON check: a value nested too deep is refused without walking all of it.
        return _storable(value, "input")

    @field_validator("input")
    @classmethod
    def _input_size(cls, value: JsonValue, info: ValidationInfo) -> JsonValue:
        limit = (info.context or {}).get("max_item_input_bytes")
        if value is None:
            raise ValueError("input is required")
        if limit is not None and len(canonical_json(value)) > limit:
            raise ValueError(f"input is larger than {limit} bytes")
        return value


class BatchIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    kind: Name
    items: list[ItemIn] = Field(min_length=1)
    params: dict[str, JsonValue] = Field(default_factory=dict)
    callback_url: AnyHttpUrl | None = None

    @model_validator(mode="before")
    @classmethod
    def _default_kind(cls, data: Any, info: ValidationInfo) -> Any:
        default = (info.context or {}).get("default_kind")
        if isinstance(data, dict) and "kind" not in data and default is not None:
            return {**data, "kind": default}
        return data

    @field_validator("kind")
    @classmethod
    def _declared_kind(cls, value: str, info: ValidationInfo) -> str:
        kinds = (info.context or {}).get("kinds")
        if kinds is not None and value not in kinds:
            raise ValueError(f"unknown kind {value!r}: the kinds declared are {', '.join(kinds)}")
        return value

    @field_validator("params", mode="before")
    @classmethod
    def _storable_params(cls, value: Any, info: ValidationInfo) -> Any:
        limit = (info.context or {}).get("max_params_bytes")
        _storable(value, "params")
        if limit is not None and isinstance(value, dict) and len(canonical_json(value)) > limit:
            raise ValueError(f"params are larger than {limit} bytes")
        return value

    @field_validator("callback_url")
    @classmethod
    def _safe_callback(cls, value: AnyHttpUrl | None, info: ValidationInfo) -> AnyHttpUrl | None:
        allow_loopback = bool((info.context or {}).get("allow_loopback_callbacks"))
        refused = callback_url_refusal(str(value), allow_loopback=allow_loopback) if value else None
        if refused:
            raise ValueError(refused)
        return value

    @field_validator("items")
    @classmethod
    def _at_most(cls, items: list[ItemIn], info: ValidationInfo) -> list[ItemIn]:
        limit = (info.context or {}).get("max_batch_items")
        if limit is not None and len(items) > limit:
            raise ValueError(f"at most {limit} items per batch, got {len(items)}")
        return items

    @model_validator(mode="after")
    def _unique_ids(self) -> BatchIn:
        seen: set[str] = set()
        for item in self.items:
            if item.id is not None:
                if item.id in seen:
                    raise ValueError(f"item id {item.id!r} appears more than once")
                seen.add(item.id)
        return self


def _storable(value: Any, field: str) -> Any:
    refused = refusal(value, field)
    if refused:
        raise ValueError(f"Firestore cannot store it: {refused}")
    return value


def parse_batch(
    payload: Any,
    *,
    kinds: Sequence[str],
    default_kind: str,
    max_batch_items: int,
    max_item_input_bytes: int,
    max_params_bytes: int | None = None,
    allow_loopback_callbacks: bool = False,
) -> BatchIn:
    """Validate a decoded JSON body; every field at fault becomes one entry of a 400. What
    passes can be stored by Firestore as it is (`sluice.domain.firestore_values`). `kind` must
    be one of `kinds`; a body without one is `default_kind`'s."""
    context = {
        "kinds": list(kinds),
        "default_kind": default_kind,
        "max_batch_items": max_batch_items,
        "max_item_input_bytes": max_item_input_bytes,
        "max_params_bytes": max_params_bytes,
        "allow_loopback_callbacks": allow_loopback_callbacks,
    }
    try:
        return BatchIn.model_validate(payload, context=context)
    except ValidationError as exc:
        errors = [
            FieldError(".".join(str(p) for p in err["loc"]) or "body", err["msg"])
            for err in exc.errors(include_url=False)
        ]
        raise Invalid("Invalid batch", "the batch has fields at fault", errors) from None


def canonical_json(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def fingerprint(batch: BatchIn) -> str:
    """The same body always has the same fingerprint, whatever its key order or spacing."""
    return hashlib.sha256(canonical_json(batch.model_dump(mode="json"))).hexdigest()


def job_id_for(tenant: str, idempotency_key: str | None) -> str:
    """With an idempotency key the job id is fixed by it, so a retry finds the same job."""
    if idempotency_key is None:
        return uuid.uuid4().hex[:20]
    digest = hashlib.sha256(f"{tenant}\0{idempotency_key}".encode()).hexdigest()
    return digest[:20]


def item_ids(job_id: str, batch: BatchIn) -> list[str]:
    """The caller's id, or one fixed by the item's position: a retried write lands on the same
    document. Generated ids are scattered, not sequential, to keep Firestore writes spread."""
    return [
        item.id or uuid.uuid5(uuid.NAMESPACE_URL, f"{job_id}/{index}").hex[:16]
        for index, item in enumerate(batch.items)
    ]


def validate_idempotency_key(key: str | None) -> str | None:
    if key is None:
        return None
    if not 1 <= len(key) <= 255 or not key.isprintable():
        raise Invalid(
            "Invalid Idempotency-Key",
            errors=[FieldError("Idempotency-Key", "must be 1 to 255 printable characters")],
        )
    return key
