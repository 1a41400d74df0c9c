"""`goshen demo`: the first-run walkthrough, run against a platform that `goshen up` started.

It makes (or reuses) an admin key, then drives the API the way a team's first day would: create a
developer, issue the developer a key, let the developer make and revoke a key of their own, and
show that the revoked key is refused at once. Then it trains the built-in digits models in Dagster
if the MLflow registry lacks them, has the developer generate a grid of digits through the
generation API, saved as a PNG, and has the digits classifier read them back through /predict.
"""

from __future__ import annotations

import io
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from goshen import accounts, dagster_runs, registry
from goshen.billing.money import credits
from goshen.catalog import DIGITS_CLASSIFIER, DIGITS_DIFFUSION
from goshen.client import GoshenAPIError, GoshenClient
from goshen.config import Settings
from goshen.db import make_engine, make_sessionmaker, session_scope
from goshen.db.models import Role, utcnow
from goshen.runtimes.diffusion import to_png_grid

DEMO_ADMIN_EMAIL = "admin@goshen.local"
DEMO_DEVELOPER_EMAIL = "developer@goshen.local"
DAGSTER_LOCATION = "goshen"  # workspace.yaml
DIGITS_JOB = "digits_models"
BILLING_JOB = "billing_daily"  # usage_daily and storage_daily for one UTC day
GRID_ROWS = 8
RUN_POLL_SECONDS = 2.0
# Step transitions and the assets' own log lines (messages without an engine event type).
FOLLOWED_EVENTS = {"STEP_START", "STEP_SUCCESS", "STEP_FAILURE", "ASSET_CHECK_EVALUATION"}
EPOCH_LINE = re.compile(r"^epoch (\d+)/(\d+) ")


def admin_key_path(settings: Settings) -> Path:
    return settings.demo_admin_key_file


def ensure_admin_key(settings: Settings) -> str:
    """The demo admin's key, kept in a 0600 file under GOSHEN_HOME; made on the first run."""
    path = admin_key_path(settings)
    engine = make_engine(settings.resolved_database_url)
    try:
        with session_scope(make_sessionmaker(engine)) as session:
            if path.exists():
                saved = path.read_text().strip()
                if accounts.authenticate(session, saved) is not None:
                    return saved
            user = accounts.get_user_by_email(session, DEMO_ADMIN_EMAIL)
            if user is None:
                user = accounts.create_user(
                    session,
                    email=DEMO_ADMIN_EMAIL,
                    role=Role.admin,
                    credits_micros=settings.new_user_credits_micros,
                )
            _, plaintext = accounts.issue_key(session, user, name="goshen demo")
    finally:
        engine.dispose()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch(mode=0o600)
    path.write_text(plaintext + "\n")
    return plaintext


def walkthrough(settings: Settings, say: Callable[[str], None] = print) -> None:
    """The whole first run: keys, the digits models, a generated grid, read back by /predict."""
    developer_key = key_walkthrough(settings, say)
    ensure_digits_models(settings, say)
    grid = generate_digits_grid(settings, developer_key, say)
    say(f"generated digits, one per column: {grid.path}")
    read_digits(settings, developer_key, grid, say)
    roll_up_usage(settings, say)
    say(
        f"open the dashboard at {settings.local_url(settings.dashboard_port)}: it signs in as the "
        f"demo admin with the key in {admin_key_path(settings)} (sign out to use another key)"
    )


def key_walkthrough(settings: Settings, say: Callable[[str], None] = print) -> str:
    """Drive the key lifecycle through the HTTP API; the developer's key.

    Raises GoshenAPIError if a step fails."""
    admin_key = ensure_admin_key(settings)
    with GoshenClient(settings.api_url, admin_key) as admin:
        say(f"API ready: {admin.readiness()['status']}")
        developer = admin.admin_find_user(DEMO_DEVELOPER_EMAIL) or admin.admin_create_user(
            DEMO_DEVELOPER_EMAIL, name="Demo Developer"
        )
        issued = admin.admin_create_key(developer["id"], name="demo")
        say(f"admin issued {developer['email']} the key {issued['prefix']}…{issued['last4']}")
    developer_key: str = issued["key"]
    with GoshenClient(settings.api_url, developer_key) as dev:
        temporary = dev.create_key("temporary", scopes=["keys"])
        say(f"developer made a key of their own: {temporary['prefix']}…{temporary['last4']}")
        say(
            f"developer's keys: {[key['name'] for key in dev.list_keys() if not key['revoked_at']]}"
        )
        dev.revoke_key(temporary["id"])
    with GoshenClient(settings.api_url, temporary["key"]) as revoked:
        try:
            revoked.list_keys()
        except GoshenAPIError as exc:
            say(f"the revoked key is refused at once: HTTP {exc.status_code}")
        else:
            raise RuntimeError("the API accepted a revoked key; this is a bug, please report it")
    say(f"admin key for the API and dashboard: {admin_key_path(settings)}")
    return developer_key


def ensure_digits_models(settings: Settings, say: Callable[[str], None] = print) -> None:
    """Train digits-diffusion and digits-classifier in Dagster unless the registry has them."""
    uri = settings.resolved_mlflow_tracking_uri
    live = registry.version_for_alias(
        uri, DIGITS_DIFFUSION, registry.PRODUCTION, settings.dependency_timeout_seconds
    )
    if live is not None:
        say(f"{DIGITS_DIFFUSION} v{live} is live in the MLflow registry")
        return
    dagster = settings.local_url(settings.dagster_port)
    run_id = dagster_runs.launch_job(dagster, DAGSTER_LOCATION, DIGITS_JOB)
    say(
        f"training the digits models in Dagster (about 3 minutes on 2 cores); "
        f"follow it at {dagster}/runs/{run_id}"
    )
    status = _follow_run(dagster, run_id, say)
    if status != "SUCCESS":
        raise RuntimeError(f"the Dagster run {run_id} ended {status}; see {dagster}/runs/{run_id}")


def _follow_run(url: str, run_id: str, say: Callable[[str], None]) -> str:
    """Print the run's step transitions and the assets' own lines until it ends."""
    cursor = None
    started = time.monotonic()
    while True:
        status = dagster_runs.run_status(url, run_id)
        messages, cursor = dagster_runs.run_messages(url, run_id, cursor)
        for message in messages:
            if _worth_showing(message):
                step = message.step or "run"
                say(f"  [{time.monotonic() - started:6.1f}s] {step:<30} {message.message}")
        if status in dagster_runs.TERMINAL_STATUSES:
            return status
        time.sleep(RUN_POLL_SECONDS)


def _worth_showing(message: dagster_runs.RunMessage) -> bool:
    """Step transitions, checks, and every fifth epoch line of the assets' own logs."""
    if message.event_type is not None:
        return message.event_type in FOLLOWED_EVENTS
    if message.level not in ("INFO", "WARNING", "ERROR", "CRITICAL"):
        return False  # the IO manager's DEBUG lines
    epoch = EPOCH_LINE.match(message.message)
    return epoch is None or int(epoch[1]) % 5 == 0 or epoch[1] == epoch[2]


def roll_up_usage(settings: Settings, say: Callable[[str], None] = print) -> None:
    """Materialize today's usage and storage rollups in Dagster, as the daily schedule does
    after midnight, so the demo's usage shows in the UI now."""
    dagster = settings.local_url(settings.dagster_port)
    today = utcnow().date().isoformat()
    run_id = dagster_runs.launch_job(dagster, DAGSTER_LOCATION, BILLING_JOB, partition=today)
    status = _follow_run(dagster, run_id, say)
    if status != "SUCCESS":
        raise RuntimeError(f"the Dagster run {run_id} ended {status}; see {dagster}/runs/{run_id}")
    say(f"usage_daily for {today} is materialized: {dagster}/assets/usage_daily")


@dataclass(frozen=True)
class DigitsGrid:
    """The saved grid, and its images (N, H, W) in [0, 255] with the digit each was asked for."""

    path: Path
    images: np.ndarray
    asked: np.ndarray


def generate_digits_grid(
    settings: Settings,
    api_key: str,
    say: Callable[[str], None] = print,
    model: str = DIGITS_DIFFUSION,
) -> DigitsGrid:
    """Generate GRID_ROWS images of each digit through the API and save them as one grid."""
    with GoshenClient(settings.api_url, api_key, timeout=120) as developer:
        before = developer.balance()
        say(f"developer's credit: {_credit_line(before)}")
        jobs = [
            developer.generate(model, {"digit": digit, "num_images": GRID_ROWS, "seed": digit})
            for digit in range(10)
        ]
        say(f"queued 10 jobs on {model}, one per digit; the first: {jobs[0]['urls']['get']}")
        columns = []
        for job in jobs:
            finished = developer.wait_for_job(job["id"])
            if finished["status"] != "succeeded":
                raise RuntimeError(
                    f"job {job['id']} ended {finished['status']}: {finished['error']}"
                )
            columns.append(
                [
                    _pixels(developer.download(image["url"]))
                    for image in finished["output"]["images"]
                ]
            )
            say(
                f"  {job['id']} (digit {len(columns) - 1}) cost "
                f"{credits(finished['cost_micros'] or 0)} credits"
            )
        metrics = finished["metrics"]
        say(
            f"10 jobs succeeded; the last ran {metrics['run_seconds']:.2f} s on {metrics['device']}"
        )
        after = developer.balance()
        spent = before["balance_micros"] - after["balance_micros"]
        say(f"developer's credit: {_credit_line(after)} ({credits(spent)} credits spent)")
    rows = [columns[digit][row] for row in range(GRID_ROWS) for digit in range(10)]
    path = settings.home_dir / "demo-digits.png"
    images = np.stack(rows)
    path.write_bytes(to_png_grid(images, columns=10, scale=4))
    return DigitsGrid(path, images, np.tile(np.arange(10), GRID_ROWS))


def read_digits(
    settings: Settings,
    api_key: str,
    grid: DigitsGrid,
    say: Callable[[str], None] = print,
    model: str = DIGITS_CLASSIFIER,
) -> float:
    """Have the digits classifier read the grid back in one /predict call; the share of the
    digits it reads as the digit asked for."""
    cells = [Image.fromarray(image) for image in grid.images]
    # The classifier takes 8x8 pixels in [0, 1], row by row (its page lists the input).
    features = np.stack(
        [np.asarray(cell.resize((8, 8), Image.Resampling.BOX), dtype=np.float32) for cell in cells]
    ).reshape(len(cells), 64)
    with GoshenClient(settings.api_url, api_key, timeout=120) as developer:
        answer = developer.predict(model, {"features": features / 255.0})
    read = np.asarray([int(label) for label in answer["labels"]])
    share = float((read == grid.asked).mean())
    say(
        f"{model} read {int((read == grid.asked).sum())} of {len(read)} generated digits as the "
        f"digit asked for, in one POST /v1/models/{model}/predict"
    )
    return share


def _credit_line(balance: dict[str, Any]) -> str:
    return (
        f"balance {credits(balance['balance_micros'])} credits, "
        f"{credits(balance['available_micros'])} available"
    )


def _pixels(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)).convert("L"))
