"""The Jobs page against a real API: every user's jobs listed newest first, filtered and paged;
a finished job's images and events; a queued job canceled through the page; the API's refusal of
a filter shown as its problem."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import pytest
from streamlit.testing.v1 import AppTest

from dashboard import jobs_data
from goshen.client import GoshenClient
from goshen.db.models import Model
from tests.dashboard.conftest import Dashboard, rendered, texts
from tests.fixtures.accounts import Account

DIGIT = {"digit": 3, "num_inference_steps": 4, "seed": 1}


def submit(dashboard: Dashboard, account: Account, model: str, **wait: Any) -> dict[str, Any]:
    with GoshenClient(dashboard.settings.api_url, account.key) as client:
        return client.generate(model, DIGIT, **wait)


def table(app: AppTest) -> list[dict[str, Any]]:
    frame = next(frame for frame in app.dataframe if frame.key == "jobs.table")
    rows: list[dict[str, Any]] = frame.value.to_dict("records")
    return rows


def choose(app: AppTest, job_id: str) -> AppTest:
    app.selectbox(key="jobs.job").select(job_id).run()
    assert not app.exception, [exception.value for exception in app.exception]
    return app


def test_every_users_jobs_are_listed_newest_first_filtered_and_paged(
    dashboard: Dashboard,
    developer: Account,
    make_account: Callable[..., Account],
    digits_model: Model,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    other = make_account()
    first = submit(dashboard, developer, digits_model.name)
    second = submit(dashboard, other, digits_model.name)
    third = submit(dashboard, developer, digits_model.name)
    monkeypatch.setattr(jobs_data, "PAGE_SIZE", 2)

    app = dashboard.open("jobs")
    assert "Jobs" in texts(app.title)
    rows = table(app)
    assert [row["id"] for row in rows] == [third["id"], second["id"]]
    assert [row["user"] for row in rows] == [developer.user_id, other.user_id]
    assert {row["status"] for row in rows} == {"queued"}
    assert {row["model"] for row in rows} == {digits_model.name}

    next(b for b in app.button if b.label == "Next page").click().run()
    assert [row["id"] for row in table(app)] == [first["id"]]
    assert "Page 2" in texts(app.caption)
    next(b for b in app.button if b.label == "Previous page").click().run()
    assert [row["id"] for row in table(app)] == [third["id"], second["id"]]

    app.text_input(key="jobs.user_id").input(other.user_id).run()
    assert [row["id"] for row in table(app)] == [second["id"]]
    app.text_input(key="jobs.user_id").input("").run()
    app.selectbox(key="jobs.status").select("succeeded").run()
    assert "No jobs match these filters." in texts(app.info)
    app.selectbox(key="jobs.status").select("queued").run()
    assert len(table(app)) == 2
    app.text_input(key="jobs.model").input("no-such-model").run()
    assert "No jobs match these filters." in texts(app.info)


def test_a_filter_the_api_refuses_shows_its_problem(dashboard: Dashboard) -> None:
    app = dashboard.open("jobs")

    app.text_input(key="jobs.user_id").input("not-a-user").run()

    assert not app.exception
    problem = texts(app.error)
    assert "Listing jobs failed" in problem and "(422)" in problem and "user_id" in problem
    assert not [frame for frame in app.dataframe if frame.key == "jobs.table"]


def test_a_succeeded_job_shows_its_images_events_and_cost(
    dashboard: Dashboard,
    developer: Account,
    digits_model: Model,
    start_worker: Callable[..., threading.Event],
) -> None:
    start_worker()
    job = submit(dashboard, developer, digits_model.name, wait=60)
    assert job["status"] == "succeeded", job

    app = choose(dashboard.open("jobs"), job["id"])

    assert not app.error, texts(app.error)
    page = rendered(app)
    assert f"Job {job['id']} — succeeded" in page
    assert [image.captions for image in app.image] == [["8x8 image/png"]]
    shown = app.image[0].value[0]
    assert "/media/" in shown and "signature=" not in shown, "its bytes, served by Streamlit"
    timeline = next(frame for frame in app.dataframe if frame.key != "jobs.table").value
    kinds = list(timeline["kind"])
    assert (kinds[0], kinds[-1]) == ("status", "done") and "output" in kinds
    assert "1 image" in list(timeline["message"])
    assert "step 4/4 (100%)" in list(timeline["message"])
    assert f"Cost (credits): {job['cost_micros'] / 1_000_000:g}" in page
    assert "Cancel job" not in [button.label for button in app.button]


def test_a_queued_job_is_canceled_through_the_page(
    dashboard: Dashboard, developer: Account, digits_model: Model
) -> None:
    job = submit(dashboard, developer, digits_model.name)
    app = choose(dashboard.open("jobs"), job["id"])
    assert f"Job {job['id']} — queued" in rendered(app)

    next(b for b in app.button if b.label == "Cancel job").click().run()
    assert "Cancel job: are you sure?" in texts(app.warning)
    next(b for b in app.button if b.label == "Confirm").click().run()

    assert not app.exception and not app.error, texts(app.error)
    assert f"Job {job['id']} — canceled." in texts(app.success)
    assert dashboard.api.admin_get_job(job["id"])["status"] == "canceled"
    assert table(app)[0]["status"] == "canceled"
