"""The bench's Firestore meter counts the documents read through it, as Firestore bills them."""

from __future__ import annotations

from google.cloud import firestore
from google.cloud.firestore_v1.base_query import FieldFilter

from testkit.firestore_meter import FirestoreMeter


def test_reads_through_the_meter_are_counted_and_writes_are_not(project, local_cloud, monkeypatch):
    direct = firestore.Client(project=project)
    for i in range(5):
        direct.collection("c").document(str(i)).set({"i": i})
    with FirestoreMeter(local_cloud.emulators.firestore_host) as meter:
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
        assert meter.documents_read == 1
        assert meter.calls == {"BatchGetDocuments": 1}
