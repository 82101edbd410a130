"""What travels on the topics: small JSON documents, typed at both ends."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

WORK_ITEMS = "work-items"


class WorkItem(BaseModel):
    """One item to process: the processor reads everything else from Firestore."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    job_id: str
    item_id: str
