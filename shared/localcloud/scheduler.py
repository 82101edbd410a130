"""Cloud Scheduler, locally: each schedule of `topology.yaml` publishes its message to its topic
every `every_seconds`, as a Cloud Scheduler job with a Pub/Sub target does in the cloud."""

from __future__ import annotations

import json
import logging
import threading

from google.api_core.exceptions import GoogleAPICallError
from google.cloud import pubsub_v1  # type: ignore[attr-defined]

from sluice.topology import Schedule

log = logging.getLogger(__name__)


class Scheduler:
    def __init__(self, project: str, schedules: dict[str, Schedule]) -> None:
        self._project = project
        self._schedules = schedules
        self._stopped = threading.Event()
        self._threads = [
            threading.Thread(target=self._run, args=(name, s), daemon=True, name=f"cron-{name}")
            for name, s in schedules.items()
        ]

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        self._stopped.set()
        for thread in self._threads:
            if thread.is_alive():
                thread.join(timeout=10)

    def _run(self, name: str, schedule: Schedule) -> None:
        publisher = pubsub_v1.PublisherClient()
        topic = publisher.topic_path(self._project, schedule.topic)
        data = json.dumps(schedule.message).encode()
        # Like cron, the first tick comes one period after start, not at once.
        while not self._stopped.wait(schedule.every_seconds):
            try:
                publisher.publish(topic, data).result(timeout=10)
            except (GoogleAPICallError, TimeoutError) as exc:
                # Cloud Scheduler logs a failed run and tries again at the next tick.
                log.warning("schedule %s could not publish: %s", name, exc)
