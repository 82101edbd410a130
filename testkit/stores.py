"""The job, intake and item stores over one layout, as the composition root builds them, for
tests that seed and read jobs directly."""

from __future__ import annotations

from dataclasses import dataclass

from google.cloud import firestore

from sluice.adapters.intake_store import IntakeStore
from sluice.adapters.items_store import ItemStore
from sluice.adapters.job_paths import JobPaths
from sluice.adapters.jobs_store import JobStore


@dataclass(frozen=True)
class Stores:
    paths: JobPaths
    jobs: JobStore
    intake: IntakeStore
    items: ItemStore


def stores(db: firestore.Client, *, shards: int, cache_bytes: int = 0) -> Stores:
    paths = JobPaths(db, shards=shards)
    return Stores(paths, JobStore(paths, cache_bytes=cache_bytes), IntakeStore(paths),
                  ItemStore(paths))  # fmt: skip
