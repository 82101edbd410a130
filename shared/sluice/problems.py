"""Errors a caller can fix, as RFC 9457 problem details.

Raised anywhere below an HTTP handler; the HTTP layer turns them into `application/problem+json`.
They are the caller's mistake, so they are never retried and never logged as failures.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sluice.domain.errors import FieldError, Invalid, Refused, Unauthenticated


@dataclass
class Problem(Exception):
    status: int
    title: str
    detail: str = ""
    errors: list[FieldError] = field(default_factory=list)
    headers: dict[str, str] = field(default_factory=dict)

    def body(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"type": "about:blank", "title": self.title, "status": self.status}
        if self.detail:
            doc["detail"] = self.detail
        if self.errors:
            doc["errors"] = [{"field": e.field, "message": e.message} for e in self.errors]
        return doc


def from_refusal(refusal: Invalid | Unauthenticated | Refused) -> Problem:
    """A domain refusal as the problem it is over HTTP."""
    if isinstance(refusal, Invalid):
        return Problem(400, refusal.title, refusal.detail, refusal.errors)
    if isinstance(refusal, Unauthenticated):
        return unauthorized(refusal.detail)
    return Problem(403, "Forbidden", refusal.detail)


def not_found(what: str) -> Problem:
    return Problem(404, "Not Found", f"{what} was not found")


def unauthorized(detail: str) -> Problem:
    return Problem(401, "Unauthorized", detail, headers={"WWW-Authenticate": "Bearer"})


def unavailable(detail: str) -> Problem:
    # 503 tells the sender to try again: nothing it sent was accepted.
    return Problem(503, "Service Unavailable", detail, headers={"Retry-After": "5"})
