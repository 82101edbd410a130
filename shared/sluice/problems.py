"""Errors a caller can fix, as RFC 9457 problem details.

Raised anywhere below an HTTP handler; the HTTP layer turns them into `application/problem+json`.
They are the caller's mistake, so they are never retried and never logged as failures.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class FieldError:
    field: str
    message: str


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


def not_found(what: str) -> Problem:
    return Problem(404, "Not Found", f"{what} was not found")


def unauthorized(detail: str) -> Problem:
    return Problem(401, "Unauthorized", detail, headers={"WWW-Authenticate": "Bearer"})


def unavailable(detail: str) -> Problem:
    # 503 tells the sender to try again: nothing it sent was accepted.
    return Problem(503, "Service Unavailable", detail, headers={"Retry-After": "5"})
