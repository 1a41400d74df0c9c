"""Bodies of the usage routes: what metered usage over a range adds up to, in total and grouped."""

from __future__ import annotations

from datetime import date, datetime
from typing import Any, Self

from pydantic import BaseModel, Field

from goshen.billing.usage import GroupBy, UsageGroup, UsageSums
from serving.schemas.billing import CreditBalancePublic


class UsageTotals(BaseModel):
    cost_micros: int = Field(description="what the usage cost, in micro-credits")
    jobs: int = Field(description="jobs metered (usage events of a job: generations)")
    requests: int = Field(description="usage events of no job: synchronous predictions")
    images: int = Field(description="images made")
    seconds: float = Field(description="compute seconds used")

    @classmethod
    def of(cls, sums: UsageSums, **labels: Any) -> Self:
        """`sums` as this body, with the fields that name its group."""
        return cls(
            cost_micros=sums.cost_micros,
            jobs=sums.jobs,
            requests=sums.requests,
            images=sums.images,
            seconds=sums.seconds,
            **labels,
        )


class UsageDay(UsageTotals):
    day: date = Field(description="the UTC day")


class UsageModel(UsageTotals):
    model_id: str | None = Field(description="the catalog entry; null when it was deleted")
    model: str | None = Field(description="the model's name, as GET /v1/models lists it")


class UsagePublic(BaseModel):
    """GET /v1/usage: your usage over [start, end), and your credit now."""

    start: datetime = Field(description="the range's first instant (UTC), included")
    end: datetime = Field(description="the range's end (UTC), excluded")
    totals: UsageTotals
    by_day: list[UsageDay] = Field(description="days with usage, oldest first")
    by_model: list[UsageModel] = Field(description="models used, highest cost first")
    credit: CreditBalancePublic = Field(
        description="your balance, open holds and available credit now (not at `end`)"
    )


class AdminUsageGroup(UsageTotals):
    """One group: only the fields of the request's `group_by` are set."""

    day: date | None = Field(default=None, description="group_by=day: the UTC day")
    user_id: str | None = Field(default=None, description="group_by=user: the user")
    email: str | None = Field(default=None, description="group_by=user: the user's email")
    model_id: str | None = Field(default=None, description="group_by=model: the catalog entry")
    model: str | None = Field(default=None, description="group_by=model: the model's name")

    @classmethod
    def of_group(cls, group: UsageGroup) -> AdminUsageGroup:
        return cls.of(
            group.sums,
            day=group.day,
            user_id=group.user_id,
            email=group.email,
            model_id=group.model_id,
            model=group.model,
        )


class AdminUsagePublic(BaseModel):
    """GET /v1/admin/usage: every user's usage over [start, end), grouped."""

    start: datetime
    end: datetime
    group_by: GroupBy
    totals: UsageTotals = Field(description="every event in the range, whatever the cap left out")
    groups: list[AdminUsageGroup] = Field(
        description="days oldest first; users and models highest cost first"
    )
    has_more: bool = Field(description="more groups than `limit`: those past it are left out")
