"""Tenants in Firestore: created and managed by the operator's `sluice` command."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from google.api_core.exceptions import AlreadyExists, NotFound
from google.cloud import firestore
from google.cloud.firestore_v1.base_query import FieldFilter

from sluice.clock import now
from sluice.domain.callbacks import new_secret
from sluice.domain.tenants import hash_api_key, new_api_key, tenant_id


class TenantExists(Exception):
    pass


class TenantNotFound(Exception):
    pass


class PhoneTaken(Exception):
    """The phone number id already routes to another tenant."""


# Who owns each WhatsApp phone number id: the record add-phone's transaction locks.
PHONE_NUMBERS = "phone_numbers"


@dataclass(frozen=True)
class NewTenant:
    id: str
    api_key: str
    signing_secret: str


class TenantStore:
    def __init__(self, db: firestore.Client) -> None:
        self._db = db
        self._tenants = db.collection("tenants")

    def create(
        self, name: str, *, sheets: bool = False, callback_url: str | None = None
    ) -> NewTenant:
        tid = tenant_id(name)
        key, secret = new_api_key(), new_secret()
        try:
            self._tenants.document(tid).create(
                {
                    "name": name,
                    "api_key_hashes": [hash_api_key(key)],
                    "sheets_enabled": sheets,
                    "callback_url": callback_url,
                    "signing_secret": secret,
                    "phone_number_ids": [],
                    "created_at": now(),
                }
            )
        except AlreadyExists:
            raise TenantExists(f"tenant {tid!r} already exists") from None
        return NewTenant(tid, key, secret)

    # -- what the functions read ---------------------------------------------------------------

    def get(self, tenant_id: str) -> dict[str, Any] | None:
        snap = self._tenants.document(tenant_id).get()
        return snap.to_dict() if snap.exists else None

    def by_key_hash(self, key_hash: str) -> tuple[str, dict[str, Any]] | None:
        """The tenant one of whose API keys has this digest."""
        return self._holding("api_key_hashes", key_hash)

    def by_phone(self, phone_number_id: str) -> tuple[str, dict[str, Any]] | None:
        """The tenant a WhatsApp phone number id routes to."""
        return self._holding("phone_number_ids", phone_number_id)

    def _holding(self, field: str, value: str) -> tuple[str, dict[str, Any]] | None:
        query = self._tenants.where(filter=FieldFilter(field, "array_contains", value)).limit(1)
        for snap in query.stream():
            return snap.id, snap.to_dict() or {}
        return None

    # -- what the operator does ------------------------------------------------------------------

    def list(self) -> list[tuple[str, dict[str, Any]]]:
        return [(s.id, s.to_dict() or {}) for s in self._tenants.order_by("__name__").stream()]

    def rotate_key(self, name: str) -> str:
        """Replace every key of the tenant with a new one; the old keys stop working at once."""
        ref = self._tenants.document(tenant_id(name))
        if not ref.get().exists:
            raise TenantNotFound(f"tenant {tenant_id(name)!r} does not exist")
        key = new_api_key()
        ref.update({"api_key_hashes": [hash_api_key(key)], "key_rotated_at": now()})
        return key

    def set_sheets(self, name: str, *, enabled: bool) -> None:
        """Put a tenant on the Sheets export whitelist, or take it off."""
        ref = self._tenants.document(tenant_id(name))
        try:
            ref.update({"sheets_enabled": enabled})
        except NotFound:
            raise TenantNotFound(f"tenant {tenant_id(name)!r} does not exist") from None

    def add_phone(self, name: str, phone_number_id: str, *, move: bool = False) -> str | None:
        """Route a WhatsApp business phone number's traffic to this tenant, and to no other.

        A number another tenant has is refused (PhoneTaken), or with `move` taken from it. One
        transaction reads the number's owner record (`phone_numbers/{id}`) and writes it with
        both tenants' lists, so of two concurrent calls for one number one wins and the other
        sees its result. Returns the tenant the number was moved from, if any."""
        if not phone_number_id.isdigit():
            raise ValueError(f"phone number id {phone_number_id!r} is not all digits")
        tid = tenant_id(name)
        ref = self._tenants.document(tid)
        owner_ref = self._db.collection(PHONE_NUMBERS).document(phone_number_id)
        holders = self._tenants.where(
            filter=FieldFilter("phone_number_ids", "array_contains", phone_number_id)
        )

        @firestore.transactional
        def assign(transaction: firestore.Transaction) -> str | None:
            tenant = ref.get(transaction=transaction)
            if not tenant.exists:
                raise TenantNotFound(f"tenant {tid!r} does not exist")
            owner = owner_ref.get(transaction=transaction)
            # Numbers added before the owner record existed are found in the tenants' lists.
            others = {s.id for s in holders.stream(transaction=transaction)} - {tid}
            if owner.exists and owner.get("tenant") != tid:
                others.add(str(owner.get("tenant")))
            if others and not move:
                raise PhoneTaken(
                    f"phone number id {phone_number_id} belongs to tenant "
                    f"{', '.join(sorted(others))}; use --move to move it to {tid}"
                )
            for other in others:
                transaction.update(
                    self._tenants.document(other),
                    {"phone_number_ids": firestore.ArrayRemove([phone_number_id])},
                )
            transaction.update(ref, {"phone_number_ids": firestore.ArrayUnion([phone_number_id])})
            if others or not owner.exists:
                transaction.set(owner_ref, {"tenant": tid, "since": now()})
            return ", ".join(sorted(others)) or None

        # Operators adding the same number at once contend for its owner record; on a busy
        # Firestore a contended lock times out (Aborted), and is worth more tries than the
        # client's five.
        return assign(self._db.transaction(max_attempts=20))
