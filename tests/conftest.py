"""Fixtures for every layer: the emulators (one pair per session), a fresh project id per test, and
the local cloud deployed into that project for end-to-end tests."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from google.cloud import firestore

from localcloud.cloud import Deployment, LocalCloud
from sluice.adapters.tenants_store import NewTenant, TenantStore


@pytest.fixture(scope="session")
def local_cloud(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCloud]:
    cloud = LocalCloud(tmp_path_factory.mktemp("localcloud"))
    with cloud.running():
        yield cloud


@pytest.fixture
def project(local_cloud: LocalCloud) -> str:
    return f"test-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def db(project: str) -> firestore.Client:
    return firestore.Client(project=project)


@pytest.fixture
def make_tenant(db: firestore.Client) -> Callable[..., NewTenant]:
    def make(name: str = "acme", **kwargs: Any) -> NewTenant:
        return TenantStore(db).create(name, **kwargs)

    return make


@pytest.fixture
def deploy(local_cloud: LocalCloud, project: str) -> Iterator[Callable[..., Deployment]]:
    """Deploy the functions into this test's project, with topology overrides if given."""
    started: list[Deployment] = []

    def run(**kwargs: Any) -> Deployment:
        deployment = local_cloud.deploy(project, **kwargs)
        started.append(deployment)
        return deployment

    yield run
    for deployment in started:
        deployment.stop(wait=False)  # its processes finish stopping while the next test runs


@pytest.fixture
def deployment(deploy: Callable[..., Deployment]) -> Deployment:
    return deploy()


@pytest.fixture
def http() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=30) as client:
        yield client
