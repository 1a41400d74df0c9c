"""/v1/admin/jobs: every user's jobs, filtered and paged; one job with its events; cancel."""

from __future__ import annotations

import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

from goshen.catalog import owned_name
from goshen.client import GoshenAPIError, GoshenClient
from goshen.db import session_scope
from goshen.db.models import Job, JobEvent, JobStatus, Model
from goshen.ids import smallest_id_at
from tests.fixtures.accounts import Account

T0 = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)
_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


def _job_id_at(moment: datetime) -> str:
    """A job id made at `moment`: its millisecond (the first 10 characters), then random."""
    random_part = "".join(secrets.choice(_CROCKFORD) for _ in range(16))
    return smallest_id_at("job", moment)[: len("job_") + 10] + random_part


@dataclass
class Seeded:
    first: Account
    second: Account
    public: Model
    owned_name: str
    # (id, user, model name, status, created) of every job, oldest first
    jobs: list[tuple[str, str, str, str, datetime]]

    def ids(self, keep: Callable[[tuple[str, str, str, str, datetime]], bool]) -> list[str]:
        """The ids of the jobs `keep` accepts, newest first (as the route lists them)."""
        return [job[0] for job in reversed(self.jobs) if keep(job)]


@pytest.fixture
def seeded(
    sessions: sessionmaker[Session],
    developer: Account,
    make_account: Callable[..., Account],
    make_model: Callable[..., Model],
) -> Seeded:
    """12 jobs, a minute apart from T0: two users, a public and an owned model, every status."""
    second = make_account()
    public, owned = make_model(), make_model()
    private_name = owned_name(second.user_id, "mine")
    with session_scope(sessions) as session:
        session.get_one(Model, owned.id).name = private_name
    statuses = list(JobStatus)
    jobs = []
    with session_scope(sessions) as session:
        for index in range(12):
            account = developer if index % 2 else second
            model = (public, public.name) if index % 3 else (owned, private_name)
            status = statuses[index % len(statuses)]
            created = T0 + timedelta(minutes=index)
            job = Job(
                id=_job_id_at(created),
                user_id=account.user_id,
                api_key_id=account.key_id,
                model_id=model[0].id,
                input={"digit": index % 10},
                status=status,
                created_at=created,
            )
            session.add(job)
            jobs.append((job.id, account.user_id, model[1], status.value, created))
    return Seeded(developer, second, public, private_name, jobs)


def _ids(client: TestClient, admin: Account, **params: Any) -> list[str]:
    response = client.get("/v1/admin/jobs", params=params, headers=admin.headers)
    assert response.status_code == 200, response.text
    return [job["id"] for job in response.json()["data"]]


def test_lists_every_users_jobs_newest_first_with_what_admins_need(
    client: TestClient, admin: Account, seeded: Seeded
) -> None:
    page = client.get("/v1/admin/jobs", params={"limit": 100}, headers=admin.headers).json()
    assert [job["id"] for job in page["data"]] == seeded.ids(lambda job: True)
    newest = page["data"][0]
    assert newest["user_id"] == seeded.first.user_id
    assert newest["api_key_id"] == seeded.first.key_id
    assert newest["model"] == seeded.public.name and newest["model_id"] == seeded.public.id
    assert (newest["attempt"], newest["max_attempts"], newest["priority"]) == (0, 3, 0)
    assert newest["lease_owner"] is None
    assert newest["urls"]["get"].endswith(f"/v1/admin/jobs/{newest['id']}")
    assert "claim_token" not in newest


def test_each_filter_narrows_the_list(client: TestClient, admin: Account, seeded: Seeded) -> None:
    for status in JobStatus:
        expected = [job[0] for job in reversed(seeded.jobs) if job[3] == status.value]
        assert expected and _ids(client, admin, status=status.value) == expected
    assert _ids(client, admin, model=seeded.public.name) == seeded.ids(
        lambda job: job[2] == seeded.public.name
    )
    assert _ids(client, admin, model=seeded.owned_name) == seeded.ids(
        lambda job: job[2] == seeded.owned_name
    )
    assert _ids(client, admin, model="no-such-model") == []
    assert _ids(client, admin, user_id=seeded.second.user_id) == seeded.ids(
        lambda job: job[1] == seeded.second.user_id
    )
    combined = _ids(client, admin, user_id=seeded.first.user_id, model=seeded.public.name)
    assert combined == seeded.ids(
        lambda job: job[1] == seeded.first.user_id and job[2] == seeded.public.name
    )


def test_a_time_range_is_exclusive_at_both_ends_to_the_millisecond(
    client: TestClient, admin: Account, seeded: Seeded
) -> None:
    third, ninth = seeded.jobs[3][4], seeded.jobs[9][4]
    window = {"created_after": third.isoformat(), "created_before": ninth.isoformat()}
    assert _ids(client, admin, **window) == seeded.ids(lambda job: third < job[4] < ninth)
    just_before = (third - timedelta(milliseconds=1)).isoformat()
    assert _ids(client, admin, created_after=just_before)[-1] == seeded.jobs[3][0]
    just_after = (ninth + timedelta(milliseconds=1)).isoformat()
    assert _ids(client, admin, created_before=just_after)[0] == seeded.jobs[9][0]
    # Another timezone names the same instant.
    in_new_york = third.astimezone(timezone(timedelta(hours=-5))).isoformat()
    assert _ids(client, admin, created_after=in_new_york) == seeded.ids(lambda job: job[4] > third)


@pytest.mark.parametrize(
    "params",
    [
        {"created_after": "2026-11-01T12:00:00"},
        {"created_before": "yesterday"},
        {"created_before": "0.5"},
        {"created_after": "1764950400"},
        {"status": "sleeping"},
        {"model": "Not A Name"},
        {"user_id": "usr_short"},
        {"limit": 101},
    ],
)
def test_bad_filters_get_422(client: TestClient, admin: Account, params: dict[str, Any]) -> None:
    response = client.get("/v1/admin/jobs", params=params, headers=admin.headers)
    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == "application/problem+json"


def test_pages_walk_every_job_once(client: TestClient, admin: Account, seeded: Seeded) -> None:
    seen: list[str] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"limit": 5, **({"cursor": cursor} if cursor else {})}
        page = client.get("/v1/admin/jobs", params=params, headers=admin.headers).json()
        seen += [job["id"] for job in page["data"]]
        if not page["has_more"]:
            break
        cursor = page["next_cursor"]
    assert seen == seeded.ids(lambda job: True)


def test_developers_get_403(client: TestClient, developer: Account, seeded: Seeded) -> None:
    job_id = seeded.jobs[0][0]
    for method, path in [
        ("GET", "/v1/admin/jobs"),
        ("GET", f"/v1/admin/jobs/{job_id}"),
        ("POST", f"/v1/admin/jobs/{job_id}/cancel"),
    ]:
        assert client.request(method, path, headers=developer.headers).status_code == 403


def test_cancel_ends_a_queued_job_and_releases_its_hold_then_409(
    client: TestClient, admin: Account, developer: Account, catalog_model: Model
) -> None:
    body = {"model": catalog_model.name, "input": {"digit": 4}}
    job = client.post("/v1/generate", json=body, headers=developer.headers).json()
    held = client.get("/v1/credits/balance", headers=developer.headers).json()["held_micros"]
    assert held > 0

    canceled = client.post(f"/v1/admin/jobs/{job['id']}/cancel", headers=admin.headers)
    assert canceled.status_code == 200, canceled.text
    assert canceled.json()["status"] == "canceled"
    assert canceled.json()["user_id"] == developer.user_id
    balance = client.get("/v1/credits/balance", headers=developer.headers).json()
    assert balance["held_micros"] == 0
    owner_view = client.get(f"/v1/jobs/{job['id']}", headers=developer.headers).json()
    assert owner_view["status"] == "canceled"

    again = client.post(f"/v1/admin/jobs/{job['id']}/cancel", headers=admin.headers)
    assert again.status_code == 409
    assert again.headers["content-type"] == "application/problem+json"

    detail = client.get(f"/v1/admin/jobs/{job['id']}", headers=admin.headers).json()
    assert [event["type"] for event in detail["events"]] == ["status", "status", "done"]
    assert [event["data"].get("status") for event in detail["events"]] == [
        "queued",
        "canceled",
        "canceled",
    ]
    assert detail["events_truncated"] is False and detail["attempt_errors"] == []


@pytest.mark.parametrize("job_id", ["job_01M8198BD1ZY9E3Q139G1Q5KPM", "job_nope", "usr_x"])
def test_unknown_or_malformed_ids_get_404(client: TestClient, admin: Account, job_id: str) -> None:
    assert client.get(f"/v1/admin/jobs/{job_id}", headers=admin.headers).status_code == 404
    response = client.post(f"/v1/admin/jobs/{job_id}/cancel", headers=admin.headers)
    assert response.status_code == 404


def test_detail_keeps_the_last_500_events_oldest_first(
    client: TestClient, admin: Account, sessions: sessionmaker[Session], seeded: Seeded
) -> None:
    job_id = seeded.jobs[0][0]
    with session_scope(sessions) as session:
        session.add_all(
            JobEvent(job_id=job_id, type="log", data={"line": f"step {n}"}) for n in range(503)
        )
    detail = client.get(f"/v1/admin/jobs/{job_id}", headers=admin.headers).json()
    lines = [event["data"]["line"] for event in detail["events"]]
    assert lines == [f"step {n}" for n in range(3, 503)]
    assert detail["events_truncated"] is True
    assert detail["user_id"] == seeded.second.user_id


def _sdk(client: TestClient, account: Account) -> GoshenClient:
    """The SDK, answered by the app in this process."""

    def through(request: httpx.Request) -> httpx.Response:
        answer = client.request(
            request.method, str(request.url), headers=dict(request.headers), content=request.read()
        )
        return httpx.Response(
            answer.status_code, headers=answer.headers.multi_items(), content=answer.content
        )

    return GoshenClient("http://testserver", account.key, transport=httpx.MockTransport(through))


def test_the_sdk_lists_reads_and_cancels_any_users_jobs(
    client: TestClient, admin: Account, seeded: Seeded
) -> None:
    with _sdk(client, admin) as sdk:
        page = sdk.admin_list_jobs(
            user_id=seeded.first.user_id, created_after=seeded.jobs[0][4], limit=2
        )
        expected = seeded.ids(lambda job: job[1] == seeded.first.user_id)
        assert [job["id"] for job in page["data"]] == expected[:2] and page["has_more"]
        rest = sdk.admin_list_jobs(user_id=seeded.first.user_id, cursor=page["next_cursor"])
        assert [job["id"] for job in rest["data"]] == expected[2:]
        queued = seeded.ids(lambda job: job[3] == "queued")[0]
        assert sdk.admin_get_job(queued)["events"] == []
        assert sdk.admin_cancel_job(queued)["status"] == "canceled"
        with pytest.raises(GoshenAPIError) as ended:
            sdk.admin_cancel_job(queued)
        assert ended.value.status_code == 409
