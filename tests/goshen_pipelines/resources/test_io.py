"""Asset outputs between steps: under GOSHEN_HOME locally, in the bucket when S3 is configured.

The S3 case talks HTTP to moto's S3 server on loopback (see tests/fixtures/storage.py).
"""

from __future__ import annotations

from pathlib import Path

import boto3
import dagster as dg
import numpy as np
import pytest

from goshen_pipelines.resources.io import AssetStorage
from tests.fixtures.storage import S3Server


@dg.asset
def produced() -> dict:
    return {"weights": np.arange(6).reshape(2, 3)}


@dg.asset
def consumed(produced: dict) -> int:
    return int(produced["weights"].sum())


def _run() -> dg.ExecuteInProcessResult:
    return dg.materialize(
        [produced, consumed],
        resources={"io_manager": AssetStorage()},
        instance=dg.DagsterInstance.ephemeral(),
    )


def test_outputs_go_under_goshen_home_by_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GOSHEN_HOME", str(tmp_path))
    result = _run()
    assert result.output_for_node("consumed") == 15
    assert (tmp_path / "dagster" / "storage" / "produced").is_file()


def test_outputs_go_to_the_bucket_when_s3_is_configured(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, s3_server: S3Server
) -> None:
    settings = {
        "HOME": str(tmp_path),
        "STORAGE_BACKEND": "s3",
        "S3_BUCKET": "goshen-io",
        "S3_PREFIX": "team/",
        "S3_ENDPOINT_URL": s3_server.endpoint_url,
        "S3_REGION": s3_server.region,
        "S3_ACCESS_KEY_ID": s3_server.access_key_id,
        "S3_SECRET_ACCESS_KEY": s3_server.secret_access_key,
    }
    for name, value in settings.items():
        monkeypatch.setenv(f"GOSHEN_{name}", value)
    s3 = boto3.client(
        "s3",
        endpoint_url=s3_server.endpoint_url,
        region_name=s3_server.region,
        aws_access_key_id=s3_server.access_key_id,
        aws_secret_access_key=s3_server.secret_access_key,
    )
    s3.create_bucket(Bucket="goshen-io")
    result = _run()
    assert result.output_for_node("consumed") == 15
    keys = [item["Key"] for item in s3.list_objects_v2(Bucket="goshen-io")["Contents"]]
    assert "team/dagster/produced" in keys
    assert not (tmp_path / "dagster" / "storage").exists()
