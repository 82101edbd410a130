"""A conversation's queue of waiting messages on the Firestore emulator: in order, dated by the
head's last try, and out of the sweeper's sight once empty."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from google.cloud import firestore

from sluice.adapters.conversations_store import ConversationStore
from sluice.domain.conversations import Ref, Turn

T0 = datetime(2026, 12, 4, tzinfo=UTC)
A, B = Ref("day", "a"), Ref("day", "b")


def since(store: ConversationStore) -> datetime | None:
    return (store.conversation_ref("p1", "u1").get().to_dict() or {}).get("waiting_since")


def heads(store: ConversationStore, at: datetime) -> list:
    return store.waiting_heads(since_before=at)


def test_the_queue_keeps_arrival_order_and_dates_only_the_heads_tries(db: firestore.Client):
    store = ConversationStore(db)
    store.park("p1", "u1", A, at=T0)
    # A user writing again does not postpone their oldest message's next try.
    assert store.take_turn("p1", "u1", B) is Turn.QUEUED
    assert since(store) == T0
    assert heads(store, T0 + timedelta(seconds=1)) == [("p1", "u1", A)]
    # A finished head lets the next go, dated now; the sweeper's late stamp for the old head
    # changes nothing.
    assert store.done("p1", "u1", A, at=T0 + timedelta(seconds=5)) == B
    store.brought("p1", "u1", A, at=T0 + timedelta(seconds=9))
    assert since(store) == T0 + timedelta(seconds=5)
    assert store.waiting("p1", "u1") == [B]


def test_an_emptied_queue_leaves_the_sweepers_sight_even_after_a_late_stamp(db: firestore.Client):
    store = ConversationStore(db)
    store.park("p1", "u1", A, at=T0)
    (found,) = heads(store, T0 + timedelta(seconds=1))
    # Meanwhile a delivery finished A: the sweep's stamp must not date an empty queue.
    assert store.done("p1", "u1", A, at=T0 + timedelta(seconds=1)) is None
    store.brought("p1", "u1", found[2], at=T0 + timedelta(seconds=2))
    assert since(store) is None
    assert heads(store, T0 + timedelta(days=1)) == []


def test_a_dated_empty_queue_is_cleaned_out_of_the_sweepers_query(db: firestore.Client):
    store = ConversationStore(db)
    store.conversation_ref("p1", "u1").set({"waiting": [], "waiting_since": T0,
                                            "phone_number_id": "p1", "wa_id": "u1"})  # fmt: skip
    assert heads(store, T0 + timedelta(seconds=1)) == []
    assert since(store) is None
