"""The job model: the one shape of a new job, and the decisions on its state."""

from __future__ import annotations

from datetime import UTC, datetime

from sluice.domain.jobs import CallbackState, JobState, completed, completes, moved, new_job

AT = datetime(2026, 12, 4, tzinfo=UTC)


def test_a_batch_and_a_whatsapp_day_have_one_shape_and_differ_only_where_they_must():
    batch = new_job(tenant="t", kind="ocr", params={}, total=3, at=AT, fingerprint="f",
                    idempotency_key="k")  # fmt: skip
    day = new_job(tenant="t", kind="whatsapp", params={}, total=0, at=AT, phone_number_id="1")
    shared = {"tenant", "kind", "params", "callback_url", "total", "state", "created_at",
              "updated_at", "completed_at"}  # fmt: skip
    assert set(batch) - shared == {"fingerprint", "idempotency_key"}
    assert set(day) - shared == {"phone_number_id", "open_ended"}
    assert batch["state"] == day["state"] == JobState.OPEN


def test_only_an_open_batch_with_every_item_finished_completes():
    batch = new_job(tenant="t", kind="ocr", params={}, total=1, at=AT)
    day = new_job(tenant="t", kind="whatsapp", params={}, total=1, at=AT, phone_number_id="1")
    assert completes(batch, all_finished=True)
    assert not completes(batch, all_finished=False)
    assert not completes(day, all_finished=True)  # a day can add more while it lasts
    assert not completes({**batch, "state": "cancelled"}, all_finished=True)


def test_each_completion_is_numbered_and_its_callback_recorded_pending_with_it():
    batch = new_job(tenant="t", kind="ocr", params={}, total=1, at=AT)
    first, fields = completed(batch, at=AT)
    assert first == 1 and fields["state"] == JobState.COMPLETED
    assert fields["callback"] == {"completion": 1, "state": CallbackState.PENDING}
    again, _ = completed({**batch, **fields}, at=AT)
    assert again == 2  # after a retry-failed reopened it


def test_reopening_a_completed_job_clears_its_completion_time():
    done = {**new_job(tenant="t", kind="ocr", params={}, total=1, at=AT), "completed_at": AT}
    assert moved(done, to=JobState.OPEN, at=AT)["completed_at"] is None
    assert "completed_at" not in moved(done, to=JobState.CANCELLED, at=AT)
