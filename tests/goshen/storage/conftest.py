"""Fixtures of the artifact store tests: `harness` and `store` run a test on a folder and on S3."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from botocore.client import BaseClient

from goshen.storage import ArtifactStore
from goshen.storage.local import LocalArtifactStore
from goshen.storage.s3 import make_s3_client
from tests.goshen.storage.harness import Harness, local_harness, s3_harness, s3_settings

if TYPE_CHECKING:
    from tests.fixtures.storage import S3Server


@pytest.fixture(scope="session")
def s3_client(s3_server: S3Server) -> BaseClient:
    """The client make_store builds for these settings, made once since boto3 clients are slow."""
    return make_s3_client(s3_settings(s3_server))


@pytest.fixture(params=["local", "s3"])
def harness(request: pytest.FixtureRequest, tmp_path: Path) -> Harness:
    if request.param == "local":
        return local_harness(tmp_path)
    return s3_harness(request.getfixturevalue("s3_client"))


@pytest.fixture
def store(harness: Harness) -> ArtifactStore:
    return harness.store


@pytest.fixture
def local_store(tmp_path: Path) -> LocalArtifactStore:
    store = local_harness(tmp_path).store
    assert isinstance(store, LocalArtifactStore)
    return store
