"""`goshen train submit | get | logs | cancel` against the real API on uvicorn. Training itself is
the pipelines'; here a job's run is what the Dagster run would write to its row."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sqlalchemy.orm import Session, sessionmaker

from goshen.config import Settings
from serving.routes import training as training_routes
from tests.fixtures.accounts import Account
from tests.fixtures.cli import GoshenCli
from tests.fixtures.training import LINES, digits_archive, run_training_job

pytestmark = pytest.mark.parametrize("backend", ["postgresql"])


def test_a_training_job_submitted_followed_and_canceled(
    live_api: Settings,
    developer: Account,
    sessions: sessionmaker[Session],
    goshen_cli: GoshenCli,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(training_routes, "LOG_POLL_SECONDS", 0.02)
    env = {"GOSHEN_API_URL": live_api.api_url, "GOSHEN_API_KEY": developer.key}
    archive = tmp_path / "digits.zip"
    archive.write_bytes(digits_archive({0: "zero", 1: "one"}))
    uploaded = goshen_cli("datasets", "upload", str(archive), "--name", "digits", "--json", env=env)
    dataset_id = json.loads(uploaded.stdout)["id"]

    submit = ["train", "submit", "--dataset", dataset_id, "--task", "diffusion", "--model", "duo"]
    not_an_object = goshen_cli(*submit, "--config", "[1]", env=env)
    assert not_an_object.exit_code == 2
    assert 'goshen: --config must be a JSON object, e.g. {"epochs": 3}' in not_an_object.stderr
    submitted = goshen_cli(
        *submit, "--config", '{"epochs": 1}', "--deploy", "none", "--json", env=env
    )
    assert submitted.exit_code == 0, submitted.stderr
    job = json.loads(submitted.stdout)
    assert (job["status"], job["model_name"], job["config"]["epochs"]) == ("queued", "duo", 1)

    run_training_job(sessions, job["id"], LINES)
    so_far = goshen_cli("train", "logs", job["id"], env=env)
    assert so_far.exit_code == 0 and so_far.stdout.splitlines() == LINES
    followed = goshen_cli("train", "logs", job["id"], "-f", "--json", env=env)
    assert json.loads(followed.stdout) == {"id": job["id"], "status": "succeeded", "lines": LINES}
    got = goshen_cli("train", "get", job["id"], env=env)
    assert f"training job {job['id']}: diffusion model duo succeeded" in got.stdout
    assert goshen_cli("train", "cancel", job["id"], env=env).exit_code == 8

    other = json.loads(goshen_cli(*submit, "--json", env=env).stdout)
    canceled = goshen_cli("train", "cancel", other["id"], "--json", env=env)
    assert json.loads(canceled.stdout)["status"] == "canceled"
    ended = goshen_cli("train", "logs", other["id"], "-f", env=env)
    assert ended.exit_code == 1 and f"goshen: job {other['id']} ended canceled" in ended.stderr
