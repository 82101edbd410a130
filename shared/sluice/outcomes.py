"""What becomes of a delivery: said once, where it is known, and translated once per entry point.

A handler returns `Ack` (done: acknowledge it) or raises one of the others, from however deep the
reason is found:

| outcome     | meaning                                   | Pub/Sub push       | Eventarc | HTTP |
|-------------|-------------------------------------------|--------------------|----------|------|
| `Ack`       | done, or nothing will ever be done        | 2xx                | 2xx      | 2xx  |
| `Redeliver` | not yet: again later, an attempt spent    | nack               | non-2xx  | 503  |
| `Defer`     | waiting for capacity: again, none spent   | published again    | non-2xx  | 503  |
| `Fail`      | an outside service refused for good       | acked, logged      | acked    | 502  |

The translations are in sluice.push (Pub/Sub push), sluice.triggers (Eventarc) and sluice.http.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Ack:
    """The delivery is done with: `subject` (an item, a job, a document path) is now `state`."""

    subject: str
    state: str
    detail: str = ""
    # Set when this delivery completed its job: the job and the completion's number.
    completed: int | None = None
    job: str = ""

    def __str__(self) -> str:
        return f"{self.subject}: {self.state}" + (f" ({self.detail})" if self.detail else "")


class NotDone(Exception):
    """A delivery that is not done with: why, and when to come again (seconds) if known."""

    def __init__(self, reason: str, *, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_after = retry_after


class Redeliver(NotDone):
    """Not finished yet (another delivery holds the item, a call failed and may pass later):
    deliver it again after the subscription's backoff. It counts toward dead-lettering."""


class Defer(NotDone):
    """No capacity came free in time: nothing was touched and no attempt was spent. It comes
    again without counting as a failure."""


class NextWave(Defer):
    """A pipeline's wave of steps ended with more to run: the item's message goes again at once
    (its next delivery runs the next wave); no attempt was spent."""


class Waiting(NotDone):
    """The item waits for a remote job it started: nothing failed and no attempt was spent. It
    is looked at again, its job polled, after the job-polls subscription's backoff."""


class Fail(NotDone):
    """An outside service refused for good: redelivery would get the same answer."""
