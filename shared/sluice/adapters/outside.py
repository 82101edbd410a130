"""What every adapter to an outside service raises when a call produced no result."""

from __future__ import annotations

from dataclasses import dataclass

import httpx


@dataclass(frozen=True)
class ProviderError(Exception):
    """A call that did not produce a result. `permanent`: a retry cannot fix it."""

    reason: str
    permanent: bool
    retry_after: float | None = None
    # The provider said "too many": the limits slow down, and the item loses no attempt.
    rate_limited: bool = False
    # Set once the limiter of the service that said so has been told, so no other one is.
    limiter_informed: bool = False
    # The request went out and no answer came back (a read timed out, the connection dropped):
    # the service may have acted on it. A call that must not be repeated blindly stops here.
    maybe_delivered: bool = False
    # The step of its kind whose call this was, when it is a pipeline's.
    step: str | None = None

    def __str__(self) -> str:
        return self.reason


def transport_error(
    service: str, exc: httpx.TransportError, *, deadline: float | None = None
) -> ProviderError:
    """Timeouts and connection failures pass with time: always transient. Only a failure before
    the request was sent (connecting, waiting for a pooled connection) proves it had no effect."""
    unsent = isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout | httpx.PoolTimeout)
    if isinstance(exc, httpx.TimeoutException):
        within = f" within its {deadline:g} s deadline" if deadline is not None else ""
        return ProviderError(
            f"{service} did not answer{within}", permanent=False, maybe_delivered=not unsent
        )
    return ProviderError(
        f"{service} unreachable: {exc}", permanent=False, maybe_delivered=not unsent
    )


def retry_after_seconds(value: str | None) -> float | None:
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None
