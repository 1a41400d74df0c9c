"""Counting in this process's memory without `limits`' limiter on the hot path: the windows are the
ones `limits` would count under the same keys, the answers are its fixed-window answers, and the
keys kept for the purpose stay bounded."""

from __future__ import annotations

import asyncio

import pytest
from limits.strategies import FixedWindowRateLimiter

from goshen.billing.rate_limits import FAILED_AUTH, RouteClass
from goshen.config import Settings
from goshen.errors import RateLimitExceededError
from serving.http import rate_limits
from serving.http.rate_limits import LoopMemoryStorage, RateLimits


def local_limits() -> RateLimits:
    settings = Settings(
        _env_file=None,
        redis_url=None,
        rate_limit_generate="2/minute",
        rate_limit_predict="3/minute",
        rate_limit_default="4/minute",
        rate_limit_failed_auth="5/minute",
    )
    limits = RateLimits(settings)
    assert limits._shared is None
    return limits


def admitted(limits: RateLimits, key_id: str, route_class: RouteClass) -> bool:
    try:
        asyncio.run(limits.admit({}, key_id, route_class))
    except RateLimitExceededError:
        return False
    return True


def address_refused(limits: RateLimits, address: str) -> bool:
    try:
        asyncio.run(limits.refuse_address(address, "hash-of-a-key-never-seen"))
    except RateLimitExceededError:
        return True
    return False


def test_counts_land_under_the_keys_limits_builds_for_the_same_windows() -> None:
    limits = local_limits()
    identifiers = ["0f6c1e2a-key-id", "::ffff:10.0.0.7", "2001:db8::1/é"]
    for identifier in identifiers:
        admitted(limits, identifier, RouteClass.predict)
        asyncio.run(limits.count_failure(identifier))

    items = [limits._items[RouteClass.predict], limits._items[FAILED_AUTH]]
    expected = {item.key_for(identifier) for item in items for identifier in identifiers}
    assert set(limits._memory._windows) == expected
    # `limits`' own limiter on the same storage reads the windows those counts made.
    reader = FixedWindowRateLimiter(limits._memory)
    for identifier in identifiers:
        assert reader.get_window_stats(items[0], identifier).remaining == 2
        assert reader.get_window_stats(items[1], identifier).remaining == 4


def test_admit_answers_as_limits_fixed_window_hit_does() -> None:
    limits = local_limits()
    reference = FixedWindowRateLimiter(LoopMemoryStorage())
    for route_class in RouteClass:
        item = limits._items[route_class]
        for key_id in ("key-a", "key-b"):
            ours = [admitted(limits, key_id, route_class) for _ in range(item.amount + 2)]
            theirs = [reference.hit(item, key_id) for _ in range(item.amount + 2)]
            assert ours == theirs == [True] * item.amount + [False, False]


def test_failed_authentications_refuse_an_address_as_limits_fixed_window_test_does() -> None:
    limits = local_limits()
    item = limits._items[FAILED_AUTH]
    reference = FixedWindowRateLimiter(LoopMemoryStorage())
    refusals = []
    for _ in range(item.amount + 1):
        refused = address_refused(limits, "10.0.0.9")
        assert refused == (not reference.test(item, "10.0.0.9"))
        refusals.append(refused)
        asyncio.run(limits.count_failure("10.0.0.9"))
        reference.hit(item, "10.0.0.9")
    assert refusals == [False] * item.amount + [True]
    assert address_refused(limits, "10.0.0.9")
    assert not address_refused(limits, "10.0.0.10")


def test_the_keys_kept_stay_bounded_and_counts_survive_their_loss(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(rate_limits, "MAX_LOCAL_KEYS", 3)
    limits = local_limits()
    assert admitted(limits, "key-0", RouteClass.predict)
    for number in range(1, 10):
        assert admitted(limits, f"key-{number}", RouteClass.predict)
        assert len(limits._local_keys[RouteClass.predict]) <= 3

    # key-0's key was dropped long ago; built again, it finds key-0's window and its count.
    assert [admitted(limits, "key-0", RouteClass.predict) for _ in range(3)] == [True, True, False]
