"""Firestore change events as Eventarc delivers them, for functions tests and the bench."""

from __future__ import annotations

import uuid
from typing import Any

from google.cloud.firestore_v1 import _helpers
from google.cloud.firestore_v1.types import Document as FirestoreDocument
from google.events.cloud.firestore import Document, DocumentEventData


def firestore_event(project: str, path: str, after: dict[str, Any]) -> tuple[bytes, dict[str, str]]:
    """A `document.v1.written` CloudEvent in Eventarc's binary mode, with the protobuf body."""
    name = f"projects/{project}/databases/(default)/documents/{path}"
    document = FirestoreDocument(name=name, fields=_helpers.encode_dict(after))
    body = DocumentEventData.serialize(
        DocumentEventData(value=Document.from_json(FirestoreDocument.to_json(document)))
    )
    headers = {
        "ce-specversion": "1.0",
        "ce-type": "google.cloud.firestore.document.v1.written",
        "ce-source": f"//firestore.googleapis.com/projects/{project}/databases/(default)",
        "ce-id": uuid.uuid4().hex,
        "ce-subject": f"documents/{path}",
        "ce-document": path,
        "Content-Type": "application/protobuf",
    }
    return body, headers
