"""A WhatsApp reply's progress on its item, so that it is sent at most once.

Sending a message cannot be made idempotent (the Cloud API has no idempotency key), so the reply
is recorded at each step, under the claim's lease: composed (the model's answer, so a retry does
not pay for it again), sending (the request is about to go out), sent (with the message id Meta
gave it). A claim that finds `sending` cannot know whether Meta got the message (the worker died
waiting for the answer, or the answer never came): it does not send again, and the item fails
saying so; an operator who decides a second message is better than none uses retry-failed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

SENT_IN_DOUBT = (
    "the reply may have been sent already (the worker was lost or no answer came back while "
    "sending it); not sent again: retry-failed sends it again"
)


@dataclass(frozen=True)
class Composed:
    text: str

    def doc(self) -> dict[str, Any]:
        return {"state": "composed", "text": self.text}


@dataclass(frozen=True)
class Sending:
    text: str

    def doc(self) -> dict[str, Any]:
        return {"state": "sending", "text": self.text}


@dataclass(frozen=True)
class Sent:
    text: str
    message_id: str

    def doc(self) -> dict[str, Any]:
        return {"state": "sent", "text": self.text, "message_id": self.message_id}


@dataclass(frozen=True)
class InDoubt:
    text: str


ReplyProgress = Composed | Sent | InDoubt | None


def reply_progress(doc: dict[str, Any] | None) -> ReplyProgress:
    """What an earlier claim recorded; a `sending` found by a later claim is in doubt."""
    doc = doc or {}
    state, text = doc.get("state"), str(doc.get("text") or "")
    if state == "sent":
        return Sent(text, str(doc["message_id"]))
    if state == "sending":
        return InDoubt(text)
    if state == "composed":
        return Composed(text)
    return None
