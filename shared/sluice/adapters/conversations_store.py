"""WhatsApp conversations in Firestore: every inbound and outbound message, with its status.

`conversations/{phone_number_id}:{wa_id}/messages/{message key}`: one conversation per business
number and user. Message ids (`wamid....`) are hashed into document ids, since they may hold
characters a document id cannot. Each write stamps `expires_at`: a Firestore TTL policy deletes a
message once nothing can repeat it any more (retention.whatsapp_message_days in topology.yaml).
"""

from __future__ import annotations

import contextlib
import hashlib
from datetime import UTC, datetime, timedelta
from typing import Any

from google.api_core.exceptions import AlreadyExists
from google.cloud import firestore

from sluice.domain.whatsapp import advance_status


def message_key(wamid: str) -> str:
    return hashlib.sha256(wamid.encode()).hexdigest()[:32]


class ConversationStore:
    def __init__(self, db: firestore.Client, *, keep: timedelta = timedelta(days=30)) -> None:
        self._db = db
        self._keep = keep

    def _expires_at(self) -> datetime:
        return datetime.now(UTC) + self._keep

    def message_ref(self, phone_id: str, wa_id: str, wamid: str) -> firestore.DocumentReference:
        conversation = self._db.collection("conversations").document(f"{phone_id}:{wa_id}")
        return conversation.collection("messages").document(message_key(wamid))

    def record_inbound(self, phone_id: str, wa_id: str, wamid: str, fields: dict[str, Any]) -> None:
        # A repeated delivery finds it recorded the first time.
        with contextlib.suppress(AlreadyExists):
            self.message_ref(phone_id, wa_id, wamid).create(
                {"id": wamid, "direction": "in", **fields, "expires_at": self._expires_at()}
            )

    def record_outbound(
        self, phone_id: str, wa_id: str, wamid: str, fields: dict[str, Any]
    ) -> None:
        """A sent message. A status may have arrived first: it is kept, never overwritten."""
        ref = self.message_ref(phone_id, wa_id, wamid)

        @firestore.transactional
        def run(tx: firestore.Transaction) -> None:
            stored = ref.get(transaction=tx).to_dict() or {}
            status = stored.get("status") or "accepted"
            sent = {"id": wamid, "direction": "out", **fields, "status": status}
            tx.set(ref, sent | {"expires_at": self._expires_at()}, merge=True)

        run(self._db.transaction())

    def apply_status(
        self, phone_id: str, wa_id: str, wamid: str, status: dict[str, Any], *, at: datetime
    ) -> str:
        """Move the message's status forward only; return the status it has afterwards."""
        ref = self.message_ref(phone_id, wa_id, wamid)

        @firestore.transactional
        def run(tx: firestore.Transaction) -> str:
            stored = ref.get(transaction=tx).to_dict() or {}
            new = advance_status(stored.get("status"), str(status["status"]))
            update: dict[str, Any] = {
                "id": wamid,
                "status": new,
                "status_updated_at": at,
                "expires_at": self._expires_at(),
            }
            if new == "failed" and status.get("errors"):
                update["errors"] = status["errors"]
            tx.set(ref, update, merge=True)
            return new

        return str(run(self._db.transaction()))
