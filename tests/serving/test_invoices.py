"""GET /v1/invoices (own, newest month first, paginated), GET /v1/invoices/{id} with download
links that work, and GET /v1/admin/invoices over every user with its filters."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

from goshen.db import session_scope
from goshen.db.models import Invoice, InvoiceStatus, utcnow
from goshen.storage import artifact_key
from tests.fixtures.accounts import Account


def _invoice(
    sessions: sessionmaker[Session],
    account: Account,
    month: str,
    status: InvoiceStatus = InvoiceStatus.finalized,
    *,
    files: bool = False,
) -> str:
    """An invoice row as the `invoices` asset writes it (its keys set with `files`)."""
    total = int(month.replace("-", ""))  # a total each month's invoice has alone
    with session_scope(sessions) as session:
        invoice = Invoice(
            user_id=account.user_id,
            month=month,
            status=status,
            opening_balance_micros=10_000_000,
            closing_balance_micros=10_000_000 - total,
            inference_micros=total,
            total_micros=total,
            line_count=3,
            finalized_at=utcnow() if status is InvoiceStatus.finalized else None,
        )
        if files:
            folder = ("invoices", month, account.user_id)
            invoice.html_key = artifact_key(*folder, "invoice.html")
            invoice.parquet_key = artifact_key(*folder, "lines.parquet")
        session.add(invoice)
        session.flush()
        return invoice.id


def _relative(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.path}?{parts.query}"


def _pages(client: TestClient, path: str, account: Account, **params: Any) -> list[list[str]]:
    """The invoice ids of each page, following `next_cursor` to the end."""
    pages, cursor = [], None
    while True:
        query = {**params, **({"cursor": cursor} if cursor else {})}
        answer = client.get(path, params=query, headers=account.headers)
        assert answer.status_code == 200, answer.text
        page = answer.json()
        pages.append([invoice["id"] for invoice in page["data"]])
        if not page["has_more"]:
            assert page["next_cursor"] is None
            return pages
        cursor = page["next_cursor"]


@pytest.fixture
def two_tenants(
    sessions: sessionmaker[Session], make_account: Callable[..., Account]
) -> tuple[Account, Account, dict[str, str], dict[str, str]]:
    """Alice's invoices for four months (written out of order, the newest a draft) and Bob's
    for two: ids by month."""
    alice, bob = make_account(), make_account()
    alices = {
        month: _invoice(sessions, alice, month, status)
        for month, status in (
            ("2026-09", InvoiceStatus.finalized),
            ("2026-11", InvoiceStatus.draft),
            ("2026-08", InvoiceStatus.finalized),
            ("2026-10", InvoiceStatus.finalized),
        )
    }
    bobs = {month: _invoice(sessions, bob, month) for month in ("2026-10", "2026-09")}
    return alice, bob, alices, bobs


def test_own_invoices_are_newest_month_first_across_pages(
    client: TestClient, two_tenants: tuple[Account, Account, dict[str, str], dict[str, str]]
) -> None:
    alice, bob, alices, bobs = two_tenants
    newest_first = [alices[month] for month in ("2026-11", "2026-10", "2026-09", "2026-08")]
    pages = _pages(client, "/v1/invoices", alice, limit=3)
    assert pages == [newest_first[:3], newest_first[3:]]
    assert _pages(client, "/v1/invoices", bob) == [[bobs["2026-10"], bobs["2026-09"]]]
    finalized = _pages(client, "/v1/invoices", alice, status="finalized", limit=1)
    assert finalized == [[invoice] for invoice in newest_first[1:]]
    drafts = client.get("/v1/invoices", params={"status": "draft"}, headers=alice.headers).json()
    assert [invoice["month"] for invoice in drafts["data"]] == ["2026-11"]


def test_another_tenants_invoice_is_404_and_its_id_no_cursor(
    client: TestClient, two_tenants: tuple[Account, Account, dict[str, str], dict[str, str]]
) -> None:
    alice, bob, alices, bobs = two_tenants
    assert client.get(f"/v1/invoices/{bobs['2026-10']}", headers=alice.headers).status_code == 404
    assert client.get(f"/v1/invoices/{alices['2026-10']}", headers=bob.headers).status_code == 404
    for malformed in ("inv_0", "usr_" + "0" * 26, "inv_" + "0" * 26):
        assert client.get(f"/v1/invoices/{malformed}", headers=alice.headers).status_code == 404
    stolen = client.get("/v1/invoices", params={"cursor": bobs["2026-10"]}, headers=alice.headers)
    assert stolen.status_code == 422 and stolen.json()["errors"][0]["field"] == "cursor"


def test_an_invoice_answers_its_totals_and_links_that_download_its_files(
    client: TestClient, sessions: sessionmaker[Session], developer: Account
) -> None:
    invoice_id = _invoice(sessions, developer, "2026-10", files=True)
    store = client.app.state.api.store
    month = ("invoices", "2026-10", developer.user_id)
    html = b"<html><body>October: 0.202610 credits</body></html>"
    store.put(artifact_key(*month, "invoice.html"), html)
    store.put(artifact_key(*month, "lines.parquet"), b"PAR1 lines PAR1")
    answer = client.get(f"/v1/invoices/{invoice_id}", headers=developer.headers)
    assert answer.status_code == 200, answer.text
    invoice = answer.json()
    assert (invoice["month"], invoice["status"], invoice["total_micros"]) == (
        "2026-10",
        "finalized",
        202_610,
    )
    assert invoice["closing_balance_micros"] == 10_000_000 - 202_610
    assert invoice["urls_expire_at"] > invoice["created_at"]
    downloaded = client.get(_relative(invoice["html_url"]))
    assert downloaded.status_code == 200 and downloaded.content == html
    assert downloaded.headers["content-type"].startswith("text/html")
    assert client.get(_relative(invoice["parquet_url"])).content == b"PAR1 lines PAR1"
    tampered = _relative(invoice["parquet_url"]).replace("lines.parquet", "invoice.html")
    assert client.get(tampered).status_code == 403


def test_an_invoice_whose_files_are_not_written_yet_has_no_links(
    client: TestClient, sessions: sessionmaker[Session], developer: Account
) -> None:
    invoice_id = _invoice(sessions, developer, "2026-11", InvoiceStatus.draft)
    invoice = client.get(f"/v1/invoices/{invoice_id}", headers=developer.headers).json()
    assert (invoice["status"], invoice["html_url"], invoice["parquet_url"]) == ("draft", None, None)


def test_invoices_need_the_usage_scope(
    client: TestClient, make_account: Callable[..., Account]
) -> None:
    generator = make_account(scopes=["generate"])
    assert client.get("/v1/invoices", headers=generator.headers).status_code == 403


def test_admins_list_every_users_invoices_with_filters(
    client: TestClient,
    two_tenants: tuple[Account, Account, dict[str, str], dict[str, str]],
    admin: Account,
    developer: Account,
) -> None:
    _alice, bob, alices, bobs = two_tenants
    path = "/v1/admin/invoices"
    every = [invoice for page in _pages(client, path, admin, limit=2) for invoice in page]
    assert sorted(every) == sorted([*alices.values(), *bobs.values()])
    answers = client.get(path, params={"limit": 100}, headers=admin.headers).json()["data"]
    months = [invoice["month"] for invoice in answers]
    assert months == sorted(months, reverse=True)
    october = _pages(client, path, admin, month="2026-10", limit=1)
    assert sorted(page[0] for page in october) == sorted([alices["2026-10"], bobs["2026-10"]])
    assert _pages(client, path, admin, user_id=bob.user_id) == [[bobs["2026-10"], bobs["2026-09"]]]
    assert _pages(client, path, admin, status="draft") == [[alices["2026-11"]]]
    assert client.get(path, params={"month": "2026-13"}, headers=admin.headers).status_code == 422
    assert client.get(path, headers=developer.headers).status_code == 403
