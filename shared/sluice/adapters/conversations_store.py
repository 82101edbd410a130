"""WhatsApp conversations in Firestore: every inbound and outbound message, with its status.

`conversations/{phone_number_id}:{wa_id}/messages/{message key}`: one conversation per business
number and user. The conversation document itself holds the messages waiting for their turn
(`waiting`, oldest first, see sluice.domain.conversations) and since when (`waiting_since`, absent
when none waits, which keeps it out of the sweeper's query).

Message ids (`wamid....`) are hashed into document ids, since they may hold characters a document
id cannot. Each write stamps `expires_at`: a Firestore TTL policy deletes a
message once nothing can repeat it any more (retention.whatsapp_message_days in topology.yaml).
"""

from __future__ import annotations

import contextlib
import hashlib
from datetime import datetime, timedelta
from typing import Any

from google.api_core.exceptions import AlreadyExists, FailedPrecondition
from google.cloud import firestore
from google.cloud.firestore_v1.base_query import FieldFilter

from sluice.clock import now
from sluice.domain import conversations
from sluice.domain.conversations import Ref, Turn
from sluice.domain.whatsapp import advance_status


def message_key(wamid: str) -> str:
    return hashlib.sha256(wamid.encode()).hexdigest()[:32]


class ConversationStore:
    def __init__(self, db: firestore.Client, *, keep: timedelta = timedelta(days=30)) -> None:
        self._db = db
        self._keep = keep

    def _expires_at(self) -> datetime:
        return now() + self._keep

    def conversation_ref(self, phone_id: str, wa_id: str) -> firestore.DocumentReference:
        return self._db.collection("conversations").document(f"{phone_id}:{wa_id}")

    def message_ref(self, phone_id: str, wa_id: str, wamid: str) -> firestore.DocumentReference:
        conversation = self.conversation_ref(phone_id, wa_id)
        return conversation.collection("messages").document(message_key(wamid))

    # -- turns: the messages waiting, in order ----------------------------------------------------

    def waiting(self, phone_id: str, wa_id: str) -> list[Ref]:
        """The messages waiting, read without a transaction: enough to go ahead when none waits,
        since Pub/Sub hands the conversation's events over one at a time."""
        return _waiting(self.conversation_ref(phone_id, wa_id).get().to_dict())

    def take_turn(self, phone_id: str, wa_id: str, me: Ref) -> Turn:
        # Queuing behind leaves `waiting_since` as it is: it dates the head's last try, and a
        # user writing again and again must not keep their own oldest message from being tried.
        return self._queue_change(phone_id, wa_id, lambda waiting: conversations.turn(waiting, me))

    def park(self, phone_id: str, wa_id: str, me: Ref, *, at: datetime) -> None:
        """`me` was tried and found no capacity: at the head, its try dated `at`."""
        self._queue_change(
            phone_id, wa_id, lambda waiting: (None, conversations.park(waiting, me)), tried=at
        )

    def done(self, phone_id: str, wa_id: str, me: Ref, *, at: datetime) -> Ref | None:
        """`me` is finished: the message to bring next (its try dated `at`), if `me` was holding
        it back."""

        def decide(waiting: list[Ref]) -> tuple[Ref | None, list[Ref]]:
            rest, bring = conversations.done(waiting, me)
            return bring, rest

        return self._queue_change(phone_id, wa_id, decide, tried=at)

    def brought(self, phone_id: str, wa_id: str, head: Ref, *, at: datetime) -> None:
        """The sweeper sent `head` again: its try dated `at`, if it is still the head (a
        delivery may have finished it meanwhile, and an empty queue is never dated)."""
        self._queue_change(phone_id, wa_id, lambda waiting: (None, waiting), tried=at, head=head)

    def _queue_change(
        self, phone_id: str, wa_id: str, decide: Any, *, tried: datetime | None = None,
        head: Ref | None = None,
    ) -> Any:  # fmt: skip
        """Apply `decide` (the queue -> (result, the queue afterwards)) in a transaction, and
        date the head's try `tried`; only while `head` is the head, when given. `waiting_since`
        is removed with the last waiting message, which takes the conversation out of the
        sweeper's query."""
        ref = self.conversation_ref(phone_id, wa_id)

        @firestore.transactional
        def run(tx: firestore.Transaction) -> Any:
            stored = ref.get(transaction=tx).to_dict() or {}
            before = _waiting(stored)
            result, after = decide(before)
            if head is not None and before[:1] != [head]:
                return result
            fields: dict[str, Any] = {}
            if after != before:
                fields["waiting"] = [r.to_doc() for r in after]
            if not after:
                if stored.get("waiting_since") is not None:
                    fields["waiting_since"] = firestore.DELETE_FIELD
            elif tried is not None:
                fields["waiting_since"] = tried
            if fields:
                tx.set(ref, {**fields, "phone_number_id": phone_id, "wa_id": wa_id}, merge=True)
            return result

        return run(self._db.transaction())

    def waiting_heads(
        self, *, since_before: datetime, limit: int = 500
    ) -> list[tuple[str, str, Ref]]:
        """(phone number id, user, the head) of each conversation whose messages have waited since
        before `since_before` with nothing brought for them since."""
        query = (
            self._db.collection("conversations")
            .where(filter=FieldFilter("waiting_since", "<", since_before))
            .limit(limit)
        )
        heads = []
        for snap in query.stream():
            doc = snap.to_dict() or {}
            if waiting := _waiting(doc):
                heads.append((str(doc["phone_number_id"]), str(doc["wa_id"]), waiting[0]))
            else:  # dated but empty (left by an older version): out of the query, unless changed
                with contextlib.suppress(FailedPrecondition):
                    snap.reference.update(
                        {"waiting_since": firestore.DELETE_FIELD},
                        option=self._db.write_option(last_update_time=snap.update_time),
                    )
        return heads

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


def _waiting(doc: dict[str, Any] | None) -> list[Ref]:
    return [Ref.from_doc(r) for r in (doc or {}).get("waiting") or []]
