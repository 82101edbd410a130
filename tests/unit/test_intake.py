"""Who owns a batch's intake, as plain decisions (sluice.domain.intake)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sluice.domain.intake import (
    Finished,
    InFlight,
    IntakeRecord,
    Mismatch,
    Own,
    Stage,
    Stale,
    advance,
    decide,
    release,
    stale,
)

NOW = datetime(2026, 1, 1, tzinfo=UTC)
LEASE = timedelta(seconds=30)
AT = {"now": NOW, "lease": LEASE, "retry_after": 2}


def record(
    stage: Stage = Stage.WRITING, owner: str | None = "a", until: float = 10
) -> IntakeRecord:
    return IntakeRecord("f", stage, owner, NOW + timedelta(seconds=until) if owner else None)


def test_another_body_under_the_key_is_a_mismatch_whatever_the_stage():
    for stage in Stage:
        assert decide(record(stage), fingerprint="g", owner="b", **AT) == Mismatch()


def test_a_published_intake_is_answered_as_finished():
    published = record(Stage.PUBLISHED, None)
    assert decide(published, fingerprint="f", owner="b", **AT) == Finished()


def test_a_live_owner_makes_the_key_in_flight_retried_soon_or_when_the_lease_runs_out():
    found = decide(record(until=9.2), fingerprint="f", owner="b", **AT)
    assert found == InFlight(retry_after=2)
    # A lease about to run out still asks for a whole second.
    found = decide(record(until=0.01), fingerprint="f", owner="b", **AT)
    assert found == InFlight(retry_after=1)


def test_an_expired_or_released_lease_is_taken_over_from_where_it_stopped():
    for expired in (record(Stage.ITEMS_WRITTEN, until=-1), record(Stage.ITEMS_WRITTEN, None)):
        found = decide(expired, fingerprint="f", owner="b", **AT)
        assert isinstance(found, Own) and found.stage is Stage.ITEMS_WRITTEN
        assert found.fields["intake_lease"] == {"owner": "b", "until": NOW + LEASE}


def test_only_the_owner_advances_never_backwards_and_publishing_ends_the_lease():
    assert advance(record(), owner="b", to=Stage.ITEMS_WRITTEN, now=NOW, lease=LEASE) is None
    moved = advance(record(), owner="a", to=Stage.ITEMS_WRITTEN, now=NOW, lease=LEASE)
    assert moved is not None and moved["intake"] == "items_written"
    assert moved["intake_lease"]["until"] == NOW + LEASE  # renewed
    back = advance(record(Stage.ITEMS_WRITTEN), owner="a", to=Stage.WRITING, now=NOW, lease=LEASE)
    assert back is not None and back["intake"] == "items_written"
    done = advance(record(), owner="a", to=Stage.PUBLISHED, now=NOW, lease=LEASE)
    assert done is not None and done["intake"] == "published" and done["intake_lease"] is None


def test_only_the_owner_releases():
    assert release(record(), owner="b", now=NOW) is None
    assert release(record(), owner="a", now=NOW) == {"intake_lease": None, "updated_at": NOW}


def test_the_sweeper_publishes_a_written_intake_and_abandons_a_half_written_one_only_late():
    hour = timedelta(hours=1)
    late = {"updated_at": NOW - 2 * hour, "now": NOW, "abandon_after": hour}
    soon = {**late, "updated_at": NOW - timedelta(minutes=5)}
    assert stale(record(Stage.ITEMS_WRITTEN, None), **soon) is Stale.PUBLISH
    assert stale(record(Stage.WRITING, None), **soon) is None  # the caller may still retry
    assert stale(record(Stage.WRITING, until=-1), **late) is Stale.ABANDON
    assert stale(record(Stage.ITEMS_WRITTEN), **late) is None  # an owner is on it
    assert stale(record(Stage.PUBLISHED, None), **late) is None


def test_a_retry_takes_an_abandoned_intake_over_and_writes_it_again():
    found = decide(record(Stage.ABANDONED, None), fingerprint="f", owner="b", **AT)
    assert isinstance(found, Own) and found.stage is Stage.WRITING
    assert found.fields["intake"] == "writing"
