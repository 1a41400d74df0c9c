"""Rate-limit policies: how many requests an API key may make per route class in a window, and
how many failed authentications one client address may make; and how the IETF RateLimit header
fields describe them.

The fields follow draft-ietf-httpapi-ratelimit-headers-10 (the Structured Fields form the draft
has used since -08): `RateLimit-Policy: "generate";q=600;w=60` names a policy with its quota `q`
per window of `w` seconds, and `RateLimit: "generate";r=0;t=12` says `r` requests remain for
`t` more seconds.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from goshen.config import RATE_LIMIT, Settings

_UNIT_SECONDS = {"second": 1, "minute": 60, "hour": 3600, "day": 86400}


class RouteClass(StrEnum):
    """What a request counts against: each API key has a quota for each."""

    generate = "generate"  # POST /v1/generate: each one queues a job
    predict = "predict"  # POST /v1/models/{name}/predict: synchronous and cheap
    default = "default"  # everything else


# Failed authentications are counted per client address, not per key.
FAILED_AUTH = "failed-auth"


@dataclass(frozen=True)
class Policy:
    """A quota of requests per window; `name` is what the RateLimit fields call it."""

    name: str
    quota: int
    window_seconds: int

    @property
    def policy_field(self) -> str:
        """This policy as a `RateLimit-Policy` field value."""
        return f'"{self.name}";q={self.quota};w={self.window_seconds}'

    def state_field(self, remaining: int, reset_seconds: int) -> str:
        """A `RateLimit` field value: `remaining` requests for `reset_seconds` more seconds."""
        return f'"{self.name}";r={remaining};t={reset_seconds}'


def parse_policy(name: str, rate: str) -> Policy:
    """The policy a rate-limit setting ("600/minute", "100 per 10 seconds") describes."""
    parsed = RATE_LIMIT.fullmatch(rate.strip().lower())
    if parsed is None:
        raise ValueError(f"{rate!r} is not a rate limit such as 600/minute")
    window = int(parsed.group("multiple") or 1) * _UNIT_SECONDS[parsed.group("unit")]
    return Policy(name, int(parsed.group("quota")), window)


def policies(settings: Settings) -> dict[str, Policy]:
    """Each route class's per-key policy, and the failed-authentication one, by name."""
    rates = {
        RouteClass.generate: settings.rate_limit_generate,
        RouteClass.predict: settings.rate_limit_predict,
        RouteClass.default: settings.rate_limit_default,
        FAILED_AUTH: settings.rate_limit_failed_auth,
    }
    return {str(name): parse_policy(str(name), rate) for name, rate in rates.items()}


def route_class(method: str, path: str) -> RouteClass:
    """The class of a request that authenticates through the shared dependency (/predict
    names its own)."""
    if method == "POST" and path == "/v1/generate":
        return RouteClass.generate
    return RouteClass.default
