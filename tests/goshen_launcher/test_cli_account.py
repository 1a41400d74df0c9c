"""`goshen datasets`, `goshen keys` and `goshen usage` against the real API on uvicorn."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from goshen.config import Settings
from tests.fixtures.accounts import Account
from tests.fixtures.cli import GoshenCli

pytestmark = pytest.mark.parametrize("backend", ["postgresql"])


def plain(text: str) -> str:
    return re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", text)


def test_a_dataset_uploaded_with_progress_then_listed_read_and_deleted(
    live_api: Settings, developer: Account, goshen_cli: GoshenCli, tmp_path: Path
) -> None:
    env = {"GOSHEN_API_URL": live_api.api_url, "GOSHEN_API_KEY": developer.key}
    table = tmp_path / "rows.csv"
    table.write_text("x,label\n" + "".join(f"{i},{i % 3}\n" for i in range(40_000)))
    size = table.stat().st_size

    uploaded = goshen_cli(
        "datasets", "upload", str(table), "--name", "rows", "--target", "label",
        env={**env, "TTY_COMPATIBLE": "1", "COLUMNS": "120"},
    )  # fmt: skip
    assert uploaded.exit_code == 0, uploaded.stderr
    drawn = plain(uploaded.stderr)
    assert "uploading rows.csv" in drawn and "━━━━" in drawn
    assert f"{size / 1e3:.1f}/{size / 1e3:.1f} kB" in drawn  # the bar ends at every byte
    dataset_id = re.search(r"dataset (ds_\w+): rows \(tabular\)", uploaded.stdout)
    assert dataset_id is not None
    dataset_id = dataset_id.group(1)

    listed = goshen_cli("datasets", "list", "--json", env=env)
    assert [d["id"] for d in json.loads(listed.stdout)] == [dataset_id]
    got = goshen_cli("datasets", "get", dataset_id, "--json", env=env)
    assert json.loads(got.stdout)["size_bytes"] > 0

    quiet = goshen_cli(
        "datasets", "upload", str(table), "--name", "again", "--json",
        env={**env, "TTY_COMPATIBLE": "1"},
    )  # fmt: skip
    assert json.loads(quiet.stdout)["name"] == "again" and "━" not in quiet.stderr

    deleted = goshen_cli("datasets", "delete", dataset_id, env=env)
    assert deleted.exit_code == 0 and f"deleted dataset {dataset_id}" in deleted.stdout
    assert goshen_cli("datasets", "get", dataset_id, env=env).exit_code == 4


def test_keys_and_usage(live_api: Settings, developer: Account, goshen_cli: GoshenCli) -> None:
    env = {"GOSHEN_API_URL": live_api.api_url, "GOSHEN_API_KEY": developer.key}
    created = goshen_cli("keys", "create", "ci", "--scope", "generate", env=env)
    assert created.exit_code == 0, created.stderr
    secret = created.stdout.strip()
    assert secret.startswith("gsk_") and "shown once" in created.stderr

    keys = json.loads(goshen_cli("keys", "list", "--json", env=env).stdout)
    new = next(key for key in keys if key["name"] == "ci")
    assert new["scopes"] == ["generate"] and len(keys) == 2
    listed = goshen_cli("keys", "list", env=env)
    assert new["id"] in listed.stdout and secret not in listed.stdout

    revoked = goshen_cli("keys", "revoke", new["id"], "--json", env=env)
    assert json.loads(revoked.stdout)["revoked_at"] is not None
    assert goshen_cli("jobs", "list", env={**env, "GOSHEN_API_KEY": secret}).exit_code == 3

    usage = goshen_cli("usage", "--json", env=env)
    assert usage.exit_code == 0, usage.stderr
    report = json.loads(usage.stdout)
    assert report["totals"]["cost_micros"] == 0 and report["credit"]["available_micros"] > 0
    shown = goshen_cli("usage", env=env)
    assert shown.exit_code == 0 and "available" in shown.stdout and "total" in shown.stdout
