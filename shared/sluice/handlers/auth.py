"""Who is calling: an API key, found by its digest, names the tenant; and what it may do."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sluice.adapters.tenants_store import TenantStore
from sluice.domain.tenants import bearer_key, hash_api_key
from sluice.problems import not_found, unauthorized


@dataclass(frozen=True)
class Tenant:
    id: str
    doc: dict[str, Any]


def authenticate(tenants: TenantStore, authorization: str | None) -> Tenant:
    found = tenants.by_key_hash(hash_api_key(bearer_key(authorization)))
    if found is None:
        raise unauthorized("unknown API key")
    return Tenant(*found)


def own_job(job: dict[str, Any] | None, tenant: Tenant, job_id: str) -> dict[str, Any]:
    """Another tenant's job is indistinguishable from a missing one."""
    if job is None or job.get("tenant") != tenant.id:
        raise not_found(f"batch {job_id}")
    return job


def features(tenant: Tenant) -> dict[str, Any]:
    """`GET /v1/me`, what a frontend asks before it shows a button: the caller's features."""
    enabled = {
        "batches": True,
        "whatsapp": bool(tenant.doc.get("phone_number_ids")),
        "sheets_export": bool(tenant.doc.get("sheets_enabled")),
        "completion_callbacks": bool(tenant.doc.get("callback_url")),
    }
    return {"tenant": tenant.id, "name": tenant.doc.get("name"), "features": enabled}
