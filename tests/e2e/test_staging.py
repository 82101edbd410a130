"""The staging pipeline shipped in topology.yaml, on the local cloud: three steps on the image model
(vision chat with the photo, an image generation, a vision check), then a remote video job, each
provider under its own limits, counted at its own local server."""

from __future__ import annotations

import pytest

from testkit.client import items_of, logs_of, submit, wait_done

pytestmark = pytest.mark.cloud

# The video vendor runs 2 jobs at once, each 2 s; a job's poll comes every second at most.
FAST = {
    "providers": {"video-vendor": {"max_concurrent": 2, "requests_per_minute": 600}},
    "kinds": {"staging": {"steps": {"video": {"job": {"poll_seconds": 1}}}}},
    "subscriptions": {
        "job-polls-to-processor": {
            "retry": {"minimum_backoff_seconds": 1, "maximum_backoff_seconds": 1}
        }
    },
}


def photos(n: int) -> list[dict]:
    return [{"image_url": f"https://crm.example/p/{i}.jpg", "room": f"room {i}"} for i in range(n)]


def test_the_staging_pipeline_runs_each_photo_through_every_step_under_each_provider_s_limits(
    http, deploy, make_tenant
):
    d = deploy(
        topology_overrides=FAST,
        provider_server_args={
            "image-model": ["--latency-ms", "100"],
            "video-vendor": ["--job-seconds", "2", "--max-running", "2"],
        },
    )
    key = make_tenant().api_key
    accepted = submit(http, d, key, kind="staging", params={"style": "Scandinavian"},
                      inputs=photos(6))  # fmt: skip
    polls = wait_done(http, accepted["status_url"], key, timeout=180)
    assert polls[-1]["counts"]["succeeded"] == 6, polls[-1]
    # Progress per step, at every poll: each item counted once at each step, what succeeded at
    # a step staying succeeded; at the end, every step succeeded for every photo.
    names = ["layout", "stage", "verify", "video"]
    for poll in polls:
        assert list(poll["steps"]) == names
        for counted in poll["steps"].values():
            assert sum(counted.values()) == 6 and min(counted.values()) >= 0, poll["steps"]
    for name in names:
        done = [poll["steps"][name]["succeeded"] for poll in polls]
        assert done == sorted(done) and done[-1] == 6
    # The video jobs were seen running at the vendor, never more than its two at once.
    assert 0 < max(poll["steps"]["video"]["running"] for poll in polls) <= 2
    # An ETA while the batch was open.
    assert any(p["estimated_completion_at"] for p in polls if p["state"] == "open")

    image_model = d.provider_server_url("image-model")
    items = {item["input"]["room"]: item for item in items_of(http, accepted["status_url"], key)}
    staged = {i: items[f"room {i}"]["steps"]["stage"]["output"]["data"][0]["url"]
              for i in range(6)}  # fmt: skip
    calls = http.get(image_model + "/_sluice/requests", params={"limit": 1000}).json()
    ok = [c["content"] for c in calls if c["status"] == 200]
    # Three successful calls per photo on the image model, one of each step.
    assert sorted(ok) == sorted(
        text for i in range(6) for text in (
            # The photo went to the vision model as an image part.
            f"A room {i}. <image https://crm.example/p/{i}.jpg>",
            f"Stage this room {i} in Scandinavian style, keeping its layout: echo: A room {i}.",
            # The staged image, as the image model answered it, went to the check.
            f"Is this staged room realistic and faithful to its layout? echo: A room {i}. "
            f"<image {staged[i]}>",
        )
    )  # fmt: skip
    # The video vendor: one job per photo, never more running than declared, polled no more
    # often than the step says, and never a 429.
    video = http.get(d.provider_server_url("video-vendor") + "/_sluice/stats").json()
    assert video["tasks_created"] == 6
    assert video["max_running"] <= 2
    assert video["rate_limited"] == 0
    assert video["min_poll_interval_s"] is None or video["min_poll_interval_s"] >= 0.95
    assert http.get(image_model + "/_sluice/stats").json()["rate_limited"] == 0
    # Each job was polled through the job-polls topic, and no delivery failed on the way.
    assert video["polls"] >= 6
    assert "Exception on" not in logs_of(d, "batch-item-processor")

    for item in items.values():
        steps = item["steps"]
        assert {name: step["state"] for name, step in steps.items()} == dict.fromkeys(
            ("layout", "stage", "verify", "video"), "succeeded"
        )
        staged = steps["stage"]["output"]["data"][0]["url"]
        assert staged.startswith(image_model + "/images/")
        # The result is the video job's final answer, with its output.
        assert item["result"]["status"] == "SUCCEEDED"
        assert item["result"]["output"][0].endswith(".mp4")
        # The generated image is fetchable where the image model said.
        assert http.get(staged).headers["content-type"] == "image/png"


def test_a_failed_video_job_is_started_again_without_repeating_the_image_model_s_steps(
    http, deploy, make_tenant
):
    d = deploy(
        topology_overrides={
            **FAST,
            "work": {"max_attempts": 30},
            # A failed attempt comes again within 2 s, not on the default backoff's minute.
            "subscriptions": {
                **FAST["subscriptions"],
                "work-items-to-processor": {
                    "retry": {"minimum_backoff_seconds": 1, "maximum_backoff_seconds": 2}
                },
            },
        },
        provider_server_args={
            "video-vendor": ["--job-seconds", "1", "--failure-rate", "0.5", "--seed", "3"]
        },
    )
    key = make_tenant().api_key
    accepted = submit(http, d, key, kind="staging", inputs=photos(4))
    assert wait_done(http, accepted["status_url"], key, timeout=180)[-1]["counts"]["succeeded"] == 4

    video = http.get(d.provider_server_url("video-vendor") + "/_sluice/stats").json()
    assert video["tasks_created"] > 4  # some jobs failed, and were started again
    # The generation paid for once per photo, whatever the video jobs did.
    calls = http.get(d.provider_server_url("image-model") + "/_sluice/requests",
                     params={"limit": 1000}).json()  # fmt: skip
    assert sum(c["status"] == 200 for c in calls) == 3 * 4
    attempts = [item["attempts"] for item in items_of(http, accepted["status_url"], key)]
    assert max(attempts) > 1  # a failed job is a failed attempt of the item


def test_a_job_past_its_timeout_fails_its_item_and_frees_its_slot_for_the_next(
    http, deploy, make_tenant
):
    # One job at a time, each running 60 s at the vendor, given 2 s by the step.
    video = {"job": {"poll_seconds": 1, "timeout_seconds": 2}}
    overrides = {
        **FAST,
        "providers": {"video-vendor": {"max_concurrent": 1}},
        "kinds": {"staging": {"steps": {"video": video}}},
    }
    d = deploy(topology_overrides=overrides,
               provider_server_args={"video-vendor": ["--job-seconds", "60"]})  # fmt: skip
    key = make_tenant().api_key
    accepted = submit(http, d, key, kind="staging", inputs=photos(2))
    assert wait_done(http, accepted["status_url"], key, timeout=180)[-1]["counts"]["failed"] == 2
    for item in items_of(http, accepted["status_url"], key):
        assert item["error"].startswith("step video: job ")
        assert item["error"].endswith("did not end within 2s")
        assert item["failed_step"] == "video"
        assert [step["state"] for step in item["steps"].values()] == [
            "succeeded", "succeeded", "succeeded", "failed"
        ]  # fmt: skip
    # The second job started once the first one's slot was let go, not after 60 s.
    video = http.get(d.provider_server_url("video-vendor") + "/_sluice/stats").json()
    assert video["tasks_created"] == 2
