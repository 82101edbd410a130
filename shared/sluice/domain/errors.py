"""What the domain refuses, in plain terms: the HTTP edge (sluice.http) gives each its status and
problem document, and nothing below it knows about HTTP."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class FieldError:
    field: str
    message: str


@dataclass
class Invalid(ValueError):
    """The caller sent something that cannot be accepted as it is (a 400)."""

    title: str
    detail: str = ""
    errors: list[FieldError] = field(default_factory=list)


@dataclass
class Unauthenticated(ValueError):
    """The caller did not prove who it is (a 401)."""

    detail: str


@dataclass
class Refused(ValueError):
    """The caller is known, and not allowed this (a 403)."""

    detail: str
