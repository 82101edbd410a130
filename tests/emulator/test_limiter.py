"""The shared limiter on the Firestore emulator: instances racing for permits never exceed the
declared limits, and a permit's release frees only what it still holds."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

from google.cloud import firestore
from google.cloud.firestore_v1.field_path import FieldPath

from localcloud.wire_meter import WireMeter
from sluice.adapters import limiter as limiter_module
from sluice.adapters.limiter import Limiter
from sluice.topology import Provider


def limiter(
    project: str, *, per_minute: int, concurrent: int, timeout: float = 5, name: str = "ai"
) -> Limiter:
    # A client of its own, as each function instance has.
    provider = Provider(
        requests_per_minute=per_minute, max_concurrent=concurrent, timeout_seconds=timeout
    )
    return Limiter(firestore.Client(project=project), name, provider, shards=3, recovery_seconds=30)


def race(instances: list[Limiter], calls: int, threads: int, **acquire: object) -> tuple[int, int]:
    """`calls` calls of 50 ms racing from `threads` threads over the instances, each waiting for
    its permit: (how many got one, the most held at once)."""
    lock = threading.Lock()
    held, peak, done = 0, 0, 0

    def call(n: int) -> None:
        nonlocal held, peak, done
        permit = instances[n % len(instances)].acquire(wait=30, **acquire)  # type: ignore[arg-type]
        assert permit is not None
        with lock:
            held += 1
            done += 1
            peak = max(peak, held)
        time.sleep(0.05)
        with lock:
            held -= 1
        instances[n % len(instances)].release(permit)

    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(call, range(calls)))
    return done, peak


def test_racing_instances_never_hold_more_slots_than_declared(project):
    instances = [limiter(project, per_minute=10_000, concurrent=3) for _ in range(3)]
    # Every slot was used, and never one more.
    assert race(instances, 36, 12, tenant="t", interactive=True) == (36, 3)


def test_the_rate_window_admits_the_declared_calls_a_minute_and_no_more(project):
    instances = [limiter(project, per_minute=12, concurrent=20) for _ in range(2)]

    def call(n: int) -> bool:
        permit = instances[n % 2].acquire(tenant="t", interactive=True, wait=1.5)
        if permit is not None:
            instances[n % 2].release(permit)
        return permit is not None

    with ThreadPoolExecutor(8) as pool:
        admitted = list(pool.map(call, range(20)))
    # The window holds 12 a minute; the rest wait past their 1.5 s and are told no capacity.
    assert sum(admitted) == 12


def test_a_release_after_the_slot_was_taken_over_leaves_the_new_holder_alone(project):
    first = limiter(project, per_minute=100, concurrent=1, timeout=0.1)
    second = limiter(project, per_minute=100, concurrent=1, timeout=0.1)
    stale = first.acquire(tenant="t", interactive=True, wait=1)
    assert stale is not None
    assert second.acquire(tenant="t", interactive=True, wait=0.2) is None  # held
    # The holder died: its permit expires (timeout + grace); another instance takes it over.
    limits = firestore.Client(project=project).collection("limits").document("ai")
    limits.collection("shards").document(str(stale.shard)).update(
        {
            FieldPath("holds", stale.token, "until").to_api_repr(): datetime.now(UTC)
            - timedelta(seconds=1)
        }
    )
    taker = second.acquire(tenant="t", interactive=True, wait=2)
    assert taker is not None
    first.release(stale)  # late: must not free the slot the taker holds
    assert second.acquire(tenant="t", interactive=True, wait=0.3) is None
    second.release(taker)
    assert second.acquire(tenant="t", interactive=True, wait=1) is not None


def test_one_holder_never_takes_more_than_its_cap_and_others_still_get_slots(project):
    """A flood of WhatsApp replies on one business number holds at most its cap of the slots."""
    shared = limiter(project, per_minute=10_000, concurrent=6, name="capped")
    flooded = [shared.acquire(tenant="number-1", interactive=True, wait=0.5, cap=2)
               for _ in range(3)]  # fmt: skip
    assert sum(p is not None for p in flooded) == 2
    # The slots it may not take are there for another number and for bulk work.
    assert shared.acquire(tenant="number-2", interactive=True, wait=2, cap=2) is not None
    assert shared.acquire(tenant="tenant-a", interactive=False, wait=2) is not None
    # Once one of its calls ends, the number may call again.
    shared.release(next(p for p in flooded if p is not None))
    assert shared.acquire(tenant="number-1", interactive=True, wait=2, cap=2) is not None


def test_racing_instances_never_give_one_holder_more_than_its_cap(project):
    instances = [limiter(project, per_minute=10_000, concurrent=8, name="raced") for _ in range(4)]
    assert race(instances, 24, 8, tenant="number-1", interactive=True, cap=2) == (24, 2)


def test_a_permit_reads_the_same_documents_whatever_the_provider_allows(
    project, local_cloud, monkeypatch
):
    """What a permit costs, counted on the wire, does not grow with `max_concurrent`: 5 calls at
    once or 500, the same shards are read and one of them written."""
    reads = {}
    # The learned backoff is read once and trusted throughout, however slow the machine.
    monkeypatch.setattr(limiter_module, "BACKOFF_CACHE_SECONDS", 600)
    with WireMeter(local_cloud.emulators.firestore_host) as meter:
        monkeypatch.setenv("FIRESTORE_EMULATOR_HOST", meter.host)
        for concurrent in (5, 500):
            instance = limiter(project, per_minute=10_000, concurrent=concurrent,
                               name=f"allows-{concurrent}")  # fmt: skip
            instance.acquire(tenant="t", interactive=True, wait=1)  # the backoff, read once
            meter.reset()
            permit = instance.acquire(tenant="t", interactive=True, wait=1)
            assert permit is not None
            instance.release(permit)
            reads[concurrent] = meter.usage()
    assert reads[5] == reads[500]
    # Every shard read once (3 here), the taken one written, the release one write.
    assert reads[5].reads == 3 and reads[5].writes == 2 and reads[5].commits == 2
