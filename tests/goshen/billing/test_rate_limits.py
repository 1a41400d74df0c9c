"""Rate-limit policies: the settings' notation, the header fields, the route classes."""

from __future__ import annotations

import limits
import pytest

from goshen.billing.rate_limits import (
    FAILED_AUTH,
    Policy,
    RouteClass,
    parse_policy,
    policies,
    route_class,
)
from goshen.config import Settings, SettingsError, load_settings


@pytest.mark.parametrize(
    ("rate", "quota", "window"),
    [
        ("600/minute", 600, 60),
        ("100/10 seconds", 100, 10),
        ("5000 per hour", 5000, 3600),
        ("1/day", 1, 86400),
        (" 7 per 2 minutes ", 7, 120),
    ],
)
def test_a_rate_is_a_quota_per_window_as_the_limits_library_reads_it(
    rate: str, quota: int, window: int
) -> None:
    policy = parse_policy("default", rate)

    assert (policy.quota, policy.window_seconds) == (quota, window)
    [item] = limits.parse_many(rate)
    assert (item.amount, item.get_expiry()) == (quota, window)


@pytest.mark.parametrize(
    "rate",
    [
        "600",
        "minute",
        "600/fortnight",
        "0/minute",
        "10/0 seconds",
        "5/00 minutes",
        "-1/minute",
        "1e3/hour",
    ],
)
def test_a_malformed_rate_is_a_settings_error_naming_the_setting(rate: str) -> None:
    with pytest.raises(SettingsError, match=r"GOSHEN_RATE_LIMIT_PREDICT.*600/minute"):
        load_settings(_env_file=None, rate_limit_predict=rate)


def test_a_redis_url_must_be_one() -> None:
    with pytest.raises(SettingsError, match=r"GOSHEN_REDIS_URL.*redis://"):
        load_settings(_env_file=None, redis_url="http://127.0.0.1:6379")


def test_the_fields_are_the_drafts_structured_form() -> None:
    policy = Policy("generate", 600, 60)

    assert policy.policy_field == '"generate";q=600;w=60'
    assert policy.state_field(0, 12) == '"generate";r=0;t=12'


def test_every_route_class_and_failed_authentications_have_a_policy() -> None:
    by_name = policies(Settings(_env_file=None))

    assert set(by_name) == {*map(str, RouteClass), FAILED_AUTH}
    assert by_name["generate"] == Policy("generate", 600, 60)
    assert by_name["predict"].quota > by_name["default"].quota > by_name["generate"].quota


def test_only_generation_submits_count_as_generate() -> None:
    assert route_class("POST", "/v1/generate") is RouteClass.generate
    assert route_class("GET", "/v1/jobs") is RouteClass.default
    assert route_class("POST", "/v1/jobs/job_1/cancel") is RouteClass.default
