"""The SDK's admin account calls (goshen.client_billing) against a real API: users listed across
pages, read and changed; a key's spend cap set and removed; credit granted once per
Idempotency-Key, adjusted, and read back as balance and ledger pages."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from goshen.client import GoshenAPIError, GoshenClient
from goshen.config import Settings
from tests.fixtures.accounts import Account

NEW_USER_CREDITS = 10_000_000


@pytest.fixture
def sdk(live_api: Settings, admin: Account) -> Iterator[GoshenClient]:
    with GoshenClient(live_api.api_url, admin.key) as client:
        yield client


def test_users_are_listed_across_pages_read_and_changed(
    sdk: GoshenClient, admin: Account, developer: Account
) -> None:
    made = sdk.admin_create_user("grace@example.com", "Grace")

    listed = [user["id"] for user in sdk.admin_list_users(limit=1)]

    assert sorted(listed) == sorted([made["id"], developer.user_id, admin.user_id])
    assert listed == sorted(listed, reverse=True)  # newest first: ids sort by creation time
    assert sdk.admin_get_user(made["id"])["email"] == "grace@example.com"
    changed = sdk.admin_update_user(made["id"], name="Grace Hopper", unmetered=True)
    assert (changed["name"], changed["unmetered"]) == ("Grace Hopper", True)
    assert sdk.admin_get_user(made["id"])["unmetered"] is True
    with pytest.raises(GoshenAPIError) as refused:
        sdk.admin_update_user(admin.user_id, disabled=True)
    assert refused.value.status_code == 409


def test_a_keys_cap_is_set_and_removed(sdk: GoshenClient, developer: Account) -> None:
    capped = sdk.admin_update_key(developer.key_id, monthly_spend_cap_micros=3_000_000)
    assert capped["monthly_spend_cap_micros"] == 3_000_000
    [listed] = sdk.admin_list_keys(developer.user_id)
    assert listed["monthly_spend_cap_micros"] == 3_000_000

    lifted = sdk.admin_update_key(developer.key_id, monthly_spend_cap_micros=None)

    assert lifted["monthly_spend_cap_micros"] is None
    sdk.admin_revoke_key(developer.key_id)
    with pytest.raises(GoshenAPIError) as refused:
        sdk.admin_update_key(developer.key_id, name="again")
    assert refused.value.status_code == 409


def test_credit_is_granted_once_per_idempotency_key_and_read_back(
    sdk: GoshenClient, developer: Account
) -> None:
    user_id = developer.user_id
    grant = sdk.admin_add_credit(user_id, 5_000_000, reason="promo", idempotency_key="promo-1")
    again = sdk.admin_add_credit(user_id, 5_000_000, reason="promo", idempotency_key="promo-1")
    adjusted = sdk.admin_add_credit(user_id, -1_000_000, kind="adjustment", reason="refund")

    assert again == grant and grant["kind"] == "grant"
    balance = sdk.admin_balance(user_id)
    assert balance["balance_micros"] == balance["available_micros"] == NEW_USER_CREDITS + 4_000_000
    first = sdk.admin_ledger(user_id, limit=2)
    assert [entry["id"] for entry in first["data"]] == [adjusted["id"], grant["id"]]
    rest = sdk.admin_ledger(user_id, limit=2, cursor=first["next_cursor"])
    assert [entry["amount_micros"] for entry in rest["data"]] == [NEW_USER_CREDITS]
    assert not rest["has_more"]
    with pytest.raises(GoshenAPIError) as refused:
        sdk.admin_add_credit(user_id, -1, kind="adjustment")
    assert refused.value.status_code == 422
