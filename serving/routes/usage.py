"""A user's own usage over a range: totals, by UTC day and by model, and their credit now."""

from __future__ import annotations

import re
from datetime import date, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query
from pydantic import BeforeValidator

from goshen.accounts import Principal
from goshen.billing import usage
from goshen.billing.usage import GroupBy
from serving.http.dependencies import ReadSessionDep, require_scope
from serving.routes.credits import balance_of
from serving.schemas.usage import UsageDay, UsageModel, UsagePublic, UsageTotals

router = APIRouter(prefix="/v1/usage", tags=["usage"])
UsagePrincipal = Annotated[Principal, Depends(require_scope("usage"))]
_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")
_DATETIME = re.compile(r"\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}(:\d{2}(\.\d+)?)?([Zz]|[+-]\d{2}:\d{2})?")


def _date_or_datetime(value: Any) -> Any:
    """`2026-12-01` is the day, not its midnight: a day as `end` includes that whole day.
    Only ISO 8601 text is a moment here (pydantic alone would read `0.5` as a Unix time)."""
    if not isinstance(value, str):
        return value
    if _DATE.fullmatch(value):
        return date.fromisoformat(value)
    if not _DATETIME.fullmatch(value):
        raise ValueError("send a day (2026-12-01) or a datetime (2026-12-01T10:00:00Z)")
    return value


_Moment = Annotated[datetime | date, BeforeValidator(_date_or_datetime)]
RangeStart = Annotated[
    _Moment | None,
    Query(
        description="a day (its UTC midnight) or a datetime (UTC unless it names an offset), "
        "included; default: the first of the month the range ends in"
    ),
]
RangeEnd = Annotated[
    _Moment | None,
    Query(
        description="a day (that whole UTC day included) or a datetime (excluded); default: "
        f"now. A range spans at most {usage.MAX_RANGE.days} days"
    ),
]


@router.get("")
def get_usage(
    principal: UsagePrincipal,
    session: ReadSessionDep,
    start: RangeStart = None,
    end: RangeEnd = None,
) -> UsagePublic:
    """Your metered usage over a range (by default this month so far): what it cost in total,
    per UTC day and per model, with your balance, open holds and available credit now."""
    span = usage.usage_range(start, end)
    user_id = principal.user.id
    by_day = usage.grouped(session, span, GroupBy.day, user_id=user_id)
    by_model = usage.grouped(session, span, GroupBy.model, user_id=user_id)
    return UsagePublic(
        start=span.start,
        end=span.end,
        totals=UsageTotals.of(usage.totals(session, span, user_id)),
        by_day=[UsageDay.of(group.sums, day=group.day) for group in by_day],
        by_model=[
            UsageModel.of(group.sums, model_id=group.model_id, model=group.model)
            for group in by_model
        ],
        credit=balance_of(session, principal.user),
    )
