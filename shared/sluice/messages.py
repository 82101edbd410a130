"""What travels on the topics: small JSON documents, typed at both ends."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

WORK_ITEMS = "work-items"
WHATSAPP_EVENTS = "whatsapp-events"
BATCH_EVENTS = "batch-events"
# Items waiting for a remote job: each message a poll of its running jobs, delivered again on its
# subscription's backoff until they end (it carries a WorkItem).
JOB_POLLS = "job-polls"


class WorkItem(BaseModel):
    """One item to process: the processor reads everything else from Firestore."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    job_id: str
    item_id: str
    # Which send of the item this message is: a newer one supersedes it (see
    # sluice.domain.items.superseded). 0 for the first, at intake.
    dispatch: int = 0


class WhatsAppEventMessage(BaseModel):
    """One message, status or error of a WhatsApp delivery (see sluice.domain.whatsapp)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    kind: Literal["message", "status", "error"]
    phone_number_id: str
    display_phone_number: str = ""
    waba_id: str = ""
    body: dict[str, Any]
    contact: dict[str, Any] | None = None


class BatchCompleted(BaseModel):
    """A batch completed (for the `completion`-th time: a retry-failed can complete it again)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    type: Literal["batch.completed"] = "batch.completed"
    job_id: str
    completion: int


SWEEPS = "sweeps"


class Sweep(BaseModel):
    """The scheduler's tick: the sweeper reads everything it needs from Firestore."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    type: Literal["sweep"] = "sweep"
