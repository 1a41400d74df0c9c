"""When billing runs: rollups just after midnight UTC, invoices on the 1st and through the
grace period, so a month's draft is re-issued daily until it finalizes."""

from datetime import date, timedelta

import dagster as dg

from goshen.config import load_settings
from goshen_pipelines.defs.billing.assets import daily_partitions, monthly_partitions

billing_daily_job = dg.define_asset_job(
    "billing_daily",
    selection=["usage_daily", "storage_daily"],
    partitions_def=daily_partitions,
    description="A UTC day's usage and storage rollups.",
    executor_def=dg.in_process_executor,
)
invoices_job = dg.define_asset_job(
    "invoices_job",
    selection=dg.AssetSelection.assets("invoices").without_checks()
    | dg.AssetSelection.checks_for_assets("invoices"),
    partitions_def=monthly_partitions,
    description="A UTC month's invoices: drafts, then finalized after the grace period.",
    executor_def=dg.in_process_executor,
)


def _month(day: date) -> str:
    return day.strftime("%Y-%m-01")


@dg.schedule(
    job=billing_daily_job,
    cron_schedule="15 0 * * *",
    execution_timezone="UTC",
    default_status=dg.DefaultScheduleStatus.RUNNING,
)
def billing_daily_schedule(context: dg.ScheduleEvaluationContext) -> list[dg.RunRequest]:
    """Yesterday's rollups (complete now) and today's (so the UI shows today)."""
    today = context.scheduled_execution_time.date()
    return [
        dg.RunRequest(run_key=f"billing-daily-{day.isoformat()}-{today}", partition_key=str(day))
        for day in (today - timedelta(days=1), today)
    ]


@dg.schedule(
    job=invoices_job,
    cron_schedule="45 0 * * *",
    execution_timezone="UTC",
    default_status=dg.DefaultScheduleStatus.RUNNING,
)
def invoices_schedule(context: dg.ScheduleEvaluationContext) -> list[dg.RunRequest]:
    """On the 1st, last month's drafts; each day of the grace period and the day after it, last
    month again (the run after the grace period finalizes it); every day, this month's draft."""
    today = context.scheduled_execution_time.date()
    last_month = today.replace(day=1) - timedelta(days=1)
    months = [_month(today)]
    if today.day <= load_settings().invoice_grace_days + 1:
        months.insert(0, _month(last_month))
    return [dg.RunRequest(run_key=f"invoices-{m}-{today}", partition_key=m) for m in months]
