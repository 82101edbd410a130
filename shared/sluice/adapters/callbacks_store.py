"""Completion callbacks in Firestore: each job's `callback` field, the state of its latest
completion's callback, changed in one transaction at a time (the decisions are
sluice.domain.callbacks'). A job's completion records it pending (see JobStore.complete_if_done).
"""

from __future__ import annotations

import contextlib
from datetime import datetime, timedelta

from google.api_core.exceptions import FailedPrecondition
from google.cloud import firestore
from google.cloud.firestore_v1.base_query import FieldFilter

from sluice.clock import now
from sluice.domain import callbacks
from sluice.domain.jobs import CallbackState


class CallbackStore:
    def __init__(self, db: firestore.Client) -> None:
        self._db = db
        self._jobs = db.collection("jobs")

    def callbacks_to_send_again(self, *, now: datetime, quiet: timedelta) -> list[tuple[str, int]]:
        """Pending callbacks no delivery chain has touched for `quiet` (see
        domain.callbacks.needs_sending_again), each stamped `sent_again_at` now, so the next
        sweep leaves it to the message sent for it."""
        query = self._jobs.where(
            filter=FieldFilter("callback.state", "==", CallbackState.PENDING.value)
        )
        found = []
        for snap in query.select(["callback", "completed_at"]).stream():
            doc = snap.to_dict() or {}
            callback = doc.get("callback") or {}
            if callbacks.needs_sending_again(
                callback, completed_at=doc.get("completed_at"), now=now, quiet=quiet
            ):
                # Conditional on the document as read: a delivery that began meanwhile wins.
                with contextlib.suppress(FailedPrecondition):
                    snap.reference.update(
                        {"callback.sent_again_at": now},
                        option=self._db.write_option(last_update_time=snap.update_time),
                    )
                    found.append((snap.id, int(callback["completion"])))
        return found

    def mark_callback(
        self, job_id: str, completion: int, state: CallbackState, *, error: str | None = None
    ) -> bool:
        """Record a callback's fate, once: False if this completion's callback was settled."""
        ref = self._jobs.document(job_id)

        @firestore.transactional
        def run(tx: firestore.Transaction) -> bool:
            callback = (ref.get(transaction=tx).to_dict() or {}).get("callback") or {}
            if not callbacks.pending(callback, completion):
                return False
            settled = {"completion": completion, "state": state.value, "at": now()}
            tx.update(ref, {"callback": settled | ({"error": error} if error else {})})
            return True

        return bool(run(self._db.transaction()))

    def lease_callback(
        self, job_id: str, completion: int, *, chain: str, now: datetime, quiet: timedelta,
        lease: timedelta,
    ) -> callbacks.Turn:  # fmt: skip
        """Decide, in one transaction, whether this delivery (of message `chain`) calls the CRM;
        if it does, it owns the callback and holds it for `lease`."""
        ref = self._jobs.document(job_id)

        @firestore.transactional
        def run(tx: firestore.Transaction) -> callbacks.Turn:
            callback = (ref.get(transaction=tx).to_dict() or {}).get("callback") or {}
            decided = callbacks.turn(
                callback, completion=completion, chain=chain, now=now, quiet=quiet
            )
            if decided is callbacks.Turn.SEND:
                tx.update(ref, {"callback.chain": chain, "callback.delivered_at": now,
                                "callback.leased_until": now + lease})  # fmt: skip
            return decided

        decided: callbacks.Turn = run(self._db.transaction())
        return decided

    def callback_not_delivered(
        self, job_id: str, completion: int, *, error: str, retry_at: datetime
    ) -> None:
        """The CRM did not take the callback (or no slot came free): free the lease for this
        chain's next delivery, not before `retry_at`, and say why."""
        ref = self._jobs.document(job_id)

        @firestore.transactional
        def run(tx: firestore.Transaction) -> None:
            callback = (ref.get(transaction=tx).to_dict() or {}).get("callback") or {}
            if callbacks.pending(callback, completion):
                tx.update(ref, {"callback.leased_until": None, "callback.retry_at": retry_at,
                                "callback.error": error})  # fmt: skip

        run(self._db.transaction())
