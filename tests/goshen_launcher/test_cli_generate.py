"""`goshen generate`, `goshen jobs` and `goshen predict` against the real API on uvicorn and a real
worker running a tiny random-weights digits model from a real MLflow registry (PostgreSQL)."""

from __future__ import annotations

import json
import re
import secrets
import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path

import httpx
import pytest
from PIL import Image

from goshen.catalog import DIGITS_DIFFUSION
from goshen.config import Settings
from goshen.db.models import Model, Role
from tests.fixtures.accounts import Account
from tests.fixtures.cli import GoshenCli
from tests.fixtures.models import RegisteredModel, deploy_classifier

pytestmark = pytest.mark.parametrize("backend", ["postgresql"])


@pytest.fixture
def platform(
    serving_settings: Settings,
    make_model: Callable[..., Model],
    tiny_digits: RegisteredModel,
    run_api: Callable[[Settings], AbstractContextManager[Settings]],
    start_worker: Callable[..., threading.Event],
) -> Iterator[Settings]:
    """The API and one worker (a pause after each step), the catalog's digits-diffusion serving
    the tiny model (made before the API starts, which then keeps it as the built-in entry)."""
    make_model(tiny_digits.name, tiny_digits.version, name=DIGITS_DIFFUSION)
    with run_api(serving_settings) as served:
        start_worker(step_seconds=0.02)  # a 200-step job runs long enough to cancel
        yield served


def plain(text: str) -> str:
    """`text` without its terminal control sequences (colours, cursor moves)."""
    return re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", text)


def said(stderr: str) -> list[str]:
    """The command's own lines of `stderr`."""
    return [line for line in stderr.splitlines() if line.startswith("goshen:")]


def signed(platform: Settings, account: Account, **more: str) -> dict[str, str]:
    return {"GOSHEN_API_URL": platform.api_url, "GOSHEN_API_KEY": account.key, **more}


def test_generate_writes_the_images_and_draws_progress_on_a_terminal(
    platform: Settings, developer: Account, goshen_cli: GoshenCli, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    terminal = signed(platform, developer, TTY_COMPATIBLE="1", COLUMNS="120")
    result = goshen_cli(
        "generate", DIGITS_DIFFUSION, "digit=7", "num_images=4", "--out", str(out), env=terminal
    )

    assert result.exit_code == 0, result.stderr
    files = sorted(out.glob("*.png"))
    assert len(files) == 4
    for path in files:
        with Image.open(path) as image:
            image.verify()
        with Image.open(path) as image:
            assert image.format == "PNG" and image.size == (8, 8)
    assert result.stdout.split() == [str(path) for path in files]
    job_id = files[0].name.rsplit("-", 1)[0]
    assert [path.name for path in files] == [f"{job_id}-{n}.png" for n in range(4)]
    # The bar, on stderr: its steps counted to the end, and the cost at 1000 micro-credits a
    # image.
    drawn = plain(result.stderr)
    assert "4/4 steps" in drawn and "━━━━" in drawn
    assert f"job {job_id} succeeded: 4 image(s), cost 0.004 credits" in drawn


def test_generate_json_prints_the_job_alone_and_draws_no_bar(
    platform: Settings, developer: Account, goshen_cli: GoshenCli, tmp_path: Path
) -> None:
    inputs = tmp_path / "inputs.json"
    inputs.write_text(json.dumps({"digit": 3, "num_images": 1}))
    terminal = signed(platform, developer, TTY_COMPATIBLE="1")
    result = goshen_cli(
        "generate", DIGITS_DIFFUSION, "--input", str(inputs), "seed=5", "--out", str(tmp_path),
        "--json", env=terminal,
    )  # fmt: skip

    assert result.exit_code == 0, result.stderr
    job = json.loads(result.stdout)
    assert job["status"] == "succeeded" and job["input"]["seed"] == 5
    assert job["input"]["digit"] == 3 and len(job["output"]["images"]) == 1
    assert (tmp_path / f"{job['id']}-0.png").is_file()
    assert "━" not in result.stderr and "steps" not in result.stderr

    # The same job through `goshen jobs`: read, listed, followed (it ended already).
    env = signed(platform, developer)
    got = goshen_cli("jobs", "get", job["id"], "--json", env=env)
    assert got.exit_code == 0 and json.loads(got.stdout)["id"] == job["id"]
    listed = goshen_cli("jobs", "list", "--json", env=env)
    assert [j["id"] for j in json.loads(listed.stdout)] == [job["id"]]
    watched = goshen_cli("jobs", "watch", job["id"], env=env)
    assert watched.exit_code == 0 and f"job {job['id']} succeeded" in watched.stderr
    assert "━" not in watched.stderr  # not a terminal: no bar, even without --json
    ended = goshen_cli("jobs", "cancel", job["id"], env=env)
    assert ended.exit_code == 8
    assert said(ended.stderr) == [
        f"goshen: 409 job {job['id']} already ended succeeded; there is nothing to cancel"
    ]


def test_no_wait_a_watch_that_times_out_and_a_canceled_job(
    platform: Settings, developer: Account, goshen_cli: GoshenCli, tmp_path: Path
) -> None:
    env = signed(platform, developer)
    queued = goshen_cli(
        "generate", DIGITS_DIFFUSION, "digit=1", "num_inference_steps=200", "--no-wait", env=env
    )
    assert queued.exit_code == 0, queued.stderr
    job_id = queued.stdout.strip()
    assert job_id.startswith("job_") and list(tmp_path.glob("*.png")) == []

    waited = goshen_cli("jobs", "watch", job_id, "--timeout", "0.3", env=env)
    assert waited.exit_code == 124
    assert said(waited.stderr) == [
        f"goshen: job {job_id} did not end within 0.3 s; it goes on — follow it with "
        f"`goshen jobs watch {job_id}`"
    ]

    canceled = goshen_cli("jobs", "cancel", job_id, "--json", env=env)
    assert canceled.exit_code == 0 and json.loads(canceled.stdout)["id"] == job_id
    watched = goshen_cli("jobs", "watch", job_id, "--json", env=env)
    assert watched.exit_code == 1
    assert json.loads(watched.stdout)["status"] == "canceled"
    # The one line of the failure (the worker, in this process, writes to stderr too).
    assert said(watched.stderr) == [f"goshen: job {job_id} ended canceled: no error recorded"]


def test_predict_reads_the_inputs_from_a_file(
    platform: Settings,
    register_classifier: Callable[..., RegisteredModel],
    make_account: Callable[..., Account],
    developer: Account,
    goshen_cli: GoshenCli,
    tmp_path: Path,
) -> None:
    name = f"classifier-{secrets.token_hex(3)}"
    register_classifier(name)
    with httpx.Client(base_url=platform.api_url, timeout=120) as api:
        deploy_classifier(api, make_account(Role.admin).headers, name)
    rows = [[0.5] * 64, [0.1] * 64]
    env = signed(platform, developer)
    for document in ({"inputs": {"features": rows}}, {"features": rows}):
        (tmp_path / "rows.json").write_text(json.dumps(document))
        answer = goshen_cli(
            "predict", name, "--input", str(tmp_path / "rows.json"), "--json", env=env
        )
        assert answer.exit_code == 0, answer.stderr
        assert len(json.loads(answer.stdout)["labels"]) == 2
    shown = goshen_cli("predict", name, "--input", str(tmp_path / "rows.json"), env=env)
    assert [line.split(":")[0] for line in shown.stdout.splitlines()] == ["0", "1"]
    missing = goshen_cli("predict", name, "--input", str(tmp_path / "none.json"), env=env)
    assert missing.exit_code == 2 and "cannot read" in said(missing.stderr)[0]
