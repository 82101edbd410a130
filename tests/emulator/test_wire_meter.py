"""The wire meter counts what Firestore and Pub/Sub would bill the calls made through it."""

from __future__ import annotations

import pytest
from google.api_core.exceptions import NotFound
from google.cloud import firestore, pubsub_v1  # type: ignore[attr-defined]
from google.cloud.firestore_v1.base_query import FieldFilter

from localcloud.wire_meter import Usage, WireMeter


def test_reads_through_the_meter_are_counted_as_billed(project, local_cloud, monkeypatch):
    direct = firestore.Client(project=project)
    for i in range(5):
        direct.collection("c").document(str(i)).set({"i": i})
    with WireMeter(local_cloud.emulators.firestore_host) as meter:
        monkeypatch.setenv("FIRESTORE_EMULATOR_HOST", meter.host)
        db = firestore.Client(project=project)
        # Seven asked for, two of them missing: seven billed reads.
        assert len(list(db.get_all([db.collection("c").document(str(i)) for i in range(7)]))) == 7
        assert meter.documents_read == 7
        query = db.collection("c").where(filter=FieldFilter("i", ">=", 2))
        assert len(list(query.stream())) == 3
        assert meter.documents_read == 10
        db.collection("c").document("new").set({"i": 9})  # passes through, reads nothing
        assert meter.documents_read == 10
        assert direct.collection("c").document("new").get().exists
        meter.reset()
        assert db.collection("c").document("0").get().to_dict() == {"i": 0}
        assert meter.usage() == Usage(reads=1)
        assert meter.calls == {"BatchGetDocuments": 1}


def test_writes_deletes_and_commits_are_counted_only_when_they_succeed(
    project, local_cloud, monkeypatch
):
    with WireMeter(local_cloud.emulators.firestore_host) as meter:
        monkeypatch.setenv("FIRESTORE_EMULATOR_HOST", meter.host)
        db = firestore.Client(project=project)
        batch = db.batch()
        batch.set(db.collection("w").document("a"), {"n": 1})
        batch.set(db.collection("w").document("b"), {"n": firestore.Increment(1)}, merge=True)
        batch.delete(db.collection("w").document("gone"))
        batch.commit()
        assert meter.usage() == Usage(writes=2, deletes=1, commits=1)
        # Refused for its precondition: nothing written, nothing billed.
        with pytest.raises(NotFound):
            db.collection("w").document("missing").update({"n": 2})
        assert meter.usage() == Usage(writes=2, deletes=1, commits=1)
        assert firestore.Client(project=project).collection("w").document("b").get().exists


def test_publishes_are_counted_in_messages_and_billed_bytes(project, local_cloud, monkeypatch):
    emulators = local_cloud.emulators
    with WireMeter(emulators.firestore_host, emulators.pubsub_host) as meter:
        monkeypatch.setenv("PUBSUB_EMULATOR_HOST", meter.host)
        publisher = pubsub_v1.PublisherClient()
        topic = publisher.topic_path(project, "metered")
        publisher.create_topic(name=topic)
        futures = [publisher.publish(topic, b"x" * 10) for _ in range(3)]
        for future in futures:
            future.result()
        usage = meter.usage()
        assert usage.messages_published == 3
        # Small requests are billed 1,000 bytes each.
        assert usage.publish_bytes_billed == 1000 * usage.publish_requests
        assert 1 <= usage.publish_requests <= 3
