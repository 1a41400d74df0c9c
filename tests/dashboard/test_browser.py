"""The dashboard in a real browser: Debian's Chromium driven by Playwright, against the dashboard
run as `goshen up` runs it (`streamlit run`, headless), a real API on uvicorn and a real worker
generating with a tiny random-weight digits model from the test MLflow registry.

It walks an admin's first day: sign in with the key typed into the form, create a developer and
issue them a key, grant them credits, generate digits from "Try it" and see the images, find the
job on Jobs as succeeded, and revoke the key (which the API then refuses). Then it opens every
page of the navigation and takes its screenshot: into GOSHEN_TEST_SCREENSHOTS_DIR when set (`make
screenshots` writes docs/dashboard/ that way), else into the test's temporary folder.

Chromium comes from Debian (`make test` installs it when it is missing and it can); Playwright
cannot download a browser here, so it is told where Debian's is.
"""

from __future__ import annotations

import os
import re
import subprocess
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.orm import Session, sessionmaker

from goshen.client import GoshenAPIError, GoshenClient
from goshen.config import Settings
from goshen.db import session_scope
from goshen.db.models import Job, JobStatus, Model, PricingUnit, UsageEvent
from goshen.ids import largest_id_at
from goshen_launcher.services import child_environment, dashboard_service
from tests.dashboard.conftest import Dashboard
from tests.fixtures.accounts import Account
from tests.fixtures.servers import _free_port, wait_until_answers
from tests.fixtures.training import digits_archive

playwright = pytest.importorskip("playwright.sync_api")

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
]
# Every page of the navigation, by its link's title, with what its screenshot is named.
PAGES = {
    "Overview": "overview",
    "Jobs": "jobs",
    "Workers": "workers",
    "Health": "health",
    "Models": "models",
    "Datasets and training": "training",
    "Users and keys": "users",
    "Usage and billing": "billing",
}
STEP_TIMEOUT_MS = 60_000
SCREENSHOT_HEIGHT = 2200
# Streamlit's "running" indicator, shown while a run is in progress.
RUNNING = '[data-testid="stStatusWidgetRunningIcon"], [data-testid="stStatusWidgetRunningManIcon"]'

pytestmark = pytest.mark.parametrize("backend", ["sqlite"], indirect=True)


@pytest.fixture
def chromium_path() -> Path:
    if not CHROMIUM.exists():
        message = "Debian's Chromium is not installed: `apt-get install chromium` (make test does)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return CHROMIUM


@pytest.fixture
def dashboard_url(dashboard: Dashboard, tmp_path: Path) -> Iterator[str]:
    """The dashboard served by `streamlit run` exactly as `goshen up` starts it, with no key
    configured (the test signs in through the form)."""
    settings = Settings(
        **{
            **dashboard.settings.model_dump(),
            "_env_file": None,
            "home": tmp_path / "dashboard-process",
            "dashboard_port": _free_port(),
        }
    )
    service = dashboard_service(settings)
    env = child_environment(settings)
    env.pop("GOSHEN_DASHBOARD_API_KEY", None)
    log = (tmp_path / "streamlit.log").open("wb")
    process = subprocess.Popen(service.argv, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = settings.local_url(settings.dashboard_port)
    try:
        wait_until_answers(f"{url}/_stcore/health", process, log=tmp_path / "streamlit.log")
        yield url
    finally:
        process.terminate()
        process.wait(timeout=20)
        log.close()


@pytest.fixture
def browser_page(chromium_path: Path) -> Iterator[Any]:
    with playwright.sync_playwright() as driver:
        browser = driver.chromium.launch(executable_path=str(chromium_path), args=CHROMIUM_FLAGS)
        context = browser.new_context(viewport={"width": 1440, "height": 1000})
        page = context.new_page()
        page.set_default_timeout(STEP_TIMEOUT_MS)
        try:
            yield page
        finally:
            context.close()
            browser.close()


def test_an_admins_first_day_in_a_real_browser(
    dashboard: Dashboard,
    dashboard_url: str,
    browser_page: Any,
    digits_model: Model,
    start_worker: Callable[..., Any],
    sessions: sessionmaker[Session],
    developer: Account,
    tmp_path: Path,
) -> None:
    page = browser_page
    expect = playwright.expect
    start_worker()
    _seed_a_week_of_usage(dashboard, sessions, developer, digits_model, tmp_path)

    page.goto(dashboard_url)
    expect(page.get_by_role("heading", name="Sign in to Goshen")).to_be_visible()
    page.get_by_label("Admin API key").fill(dashboard.admin.key)
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("heading", name="Overview")).to_be_visible()

    _open(page, "Users and keys")
    email = f"ada-{int(time.time())}@example.com"
    page.get_by_label("Email").fill(email)
    page.get_by_label("Name").first.fill("Ada Lovelace")
    page.get_by_role("button", name="Create user").click()
    expect(page.get_by_text(email).first).to_be_visible()
    user = dashboard.api.admin_find_user(email)
    assert user is not None, "the form did not create the user"

    _choose(page, "User", email)
    page.get_by_label("Key name").fill("first key")
    page.get_by_role("button", name="Issue key").click()
    secret_block = page.locator("code").filter(has_text=re.compile(r"^gsk_"))
    expect(secret_block.first).to_be_visible()
    secret = secret_block.first.inner_text().strip()
    with GoshenClient(dashboard.settings.api_url, secret) as issued:
        assert issued.balance()["balance_micros"] >= 0, "the issued key does not work"

    before = dashboard.api.admin_balance(user["id"])["balance_micros"]
    page.get_by_label("Amount (credits)").fill("25")
    page.get_by_label("Reason").fill("welcome credit")
    page.get_by_role("button", name="Add to ledger").click()
    expect(page.get_by_text("welcome credit").first).to_be_visible()
    assert dashboard.api.admin_balance(user["id"])["balance_micros"] == before + 25_000_000

    _open(page, "Models")
    _choose(page, "Model", digits_model.name)
    page.get_by_role("tab", name="Try it").click()
    page.get_by_role("button", name="Generate").click()
    expect(page.locator('[data-testid="stImage"] img').first).to_be_visible()
    jobs = dashboard.api.admin_list_jobs(user_id=dashboard.admin.user_id)["data"]
    assert jobs and jobs[0]["status"] == "succeeded", jobs[:1]

    _open(page, "Jobs")
    _choose(page, "Job", jobs[0]["id"])
    expect(page.get_by_text(f"{jobs[0]['id']} — succeeded").first).to_be_visible()
    expect(page.locator('[data-testid="stImage"] img').first).to_be_visible()

    _open(page, "Users and keys")
    _choose(page, "User", email)
    _choose(page, "Key", "first key")
    page.get_by_role("button", name="Revoke key").click()
    page.get_by_role("button", name="Confirm").click()
    expect(page.get_by_text("revoked").first).to_be_visible()
    with (
        GoshenClient(dashboard.settings.api_url, secret) as revoked,
        pytest.raises(GoshenAPIError) as refused,
    ):
        revoked.balance()
    assert refused.value.status_code == 401

    # The screenshots show a job with its images and a developer's ledger.
    chosen = {"Jobs": ("Job", jobs[0]["id"]), "Users and keys": ("User", developer.user_id)}
    folder = Path(os.environ.get("GOSHEN_TEST_SCREENSHOTS_DIR") or tmp_path)
    _screenshot_every_page(page, folder, chosen)


def _screenshot_every_page(page: Any, folder: Path, chosen: dict[str, tuple[str, str]]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    # Streamlit scrolls its main area, not the page: a tall window shows a whole page.
    page.set_viewport_size({"width": 1440, "height": SCREENSHOT_HEIGHT})
    for title, name in PAGES.items():
        _open(page, title)
        if title in chosen:
            _choose(page, *chosen[title])
        _settle(page)
        page.screenshot(path=str(folder / f"{name}.png"), full_page=True)
        assert not page.locator('[data-testid="stException"]').count(), f"{title} raised"


def _open(page: Any, title: str) -> None:
    """Follow the navigation's link to the page titled `title` and wait for its heading."""
    more = page.locator('[data-testid="stSidebarNavViewButton"]')
    if more.count() and "more" in more.inner_text().lower():
        more.click()
    page.locator('[data-testid="stSidebarNav"]').get_by_role("link", name=title).click()
    playwright.expect(page.get_by_role("heading", name=title).first).to_be_visible()


def _choose(page: Any, label: str, option: str) -> None:
    """Pick the option containing `option` in the selectbox labeled `label`."""
    box = page.locator('[data-testid="stSelectbox"]').filter(
        has=page.get_by_text(label, exact=True)
    )
    box.first.scroll_into_view_if_needed()
    _settle(page)
    box.first.click()
    page.get_by_role("option").filter(has_text=option).first.click()
    _settle(page)


def _settle(page: Any) -> None:
    """Wait until the app has finished its run (the running indicator is gone)."""
    page.wait_for_timeout(300)
    page.wait_for_function(f"() => !document.querySelector('{RUNNING}')")


def _seed_a_week_of_usage(
    dashboard: Dashboard,
    sessions: sessionmaker[Session],
    developer: Account,
    model: Model,
    folder: Path,
) -> None:
    """A developer's usage: a dataset uploaded (it waits for Dagster, which is not running
    here), three jobs generated now through the API by the worker, and, on the
    month's earlier days, succeeded jobs as the platform records them (their ids made at their
    time, their usage metered) without their images, so the usage charts have a series."""
    with GoshenClient(dashboard.settings.api_url, developer.key, timeout=120) as client:
        for digit in (3, 5, 8):
            job = client.generate(model.name, {"digit": digit, "num_images": 4}, wait=60)
            assert job["status"] == "succeeded", job
        archive = folder / "zero-or-one.zip"
        archive.write_bytes(digits_archive({0: "zero", 1: "one"}))
        client.upload_dataset(archive, "zero-or-one")
    now = datetime.now(UTC)
    with session_scope(sessions) as session:
        for days_ago in range(1, min(7, now.day)):
            for count in range(1 + (days_ago * 3) % 5):
                at = now - timedelta(days=days_ago, minutes=count)
                job_id = largest_id_at("job", at)
                session.add(
                    Job(
                        id=job_id,
                        user_id=developer.user_id,
                        api_key_id=developer.key_id,
                        model_id=model.id,
                        model_version=model.live_version,
                        input={"digit": count, "num_images": 4},
                        status=JobStatus.succeeded,
                        created_at=at,
                        started_at=at,
                        completed_at=at + timedelta(seconds=2),
                        queue_seconds=0.1,
                        run_seconds=1.9,
                    )
                )
                session.flush()
                session.add(
                    UsageEvent(
                        user_id=developer.user_id,
                        api_key_id=developer.key_id,
                        model_id=model.id,
                        job_id=job_id,
                        kind="generation",
                        quantity=4,
                        unit=PricingUnit.image,
                        cost_micros=4 * model.price_micros,
                        images=4,
                        seconds=1.9,
                        created_at=at + timedelta(seconds=2),
                    )
                )
