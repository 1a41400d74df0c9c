"""Launching and following Dagster runs through the webserver's GraphQL API.

Runs launched this way go through the instance's run coordinator and launcher like runs started
in the Dagster UI, and show there; `goshen demo` uses it to train the built-in models.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from goshen.config import Settings
from goshen.errors import GoshenError

REPOSITORY = "__repository__"  # what Dagster calls the repository of a Definitions object
EMBEDDED_DAGSTER_INSTANCE = """\
# The embedded Dagster instance that `goshen up` runs: SQLite storage in this folder.
# Written once by `goshen up` and never overwritten; the production instance is deploy/dagster.yaml.
telemetry:
  enabled: false
nux:
  enabled: false
# One run at a time, each in one process (the jobs use the in-process executor): SQLite gets a
# single run writing its events, not several runs and step processes writing at once.
run_coordinator:
  module: dagster.core.run_coordinator
  class: QueuedRunCoordinator
concurrency:
  runs:
    max_concurrent_runs: 1
"""
TERMINAL_STATUSES = ("SUCCESS", "FAILURE", "CANCELED")

LAUNCH_RUN = """
mutation LaunchRun($params: ExecutionParams!) {
  launchRun(executionParams: $params) {
    __typename
    ... on LaunchRunSuccess { run { runId } }
    ... on RunConfigValidationInvalid { errors { message } }
    ... on Error { message }
  }
}
"""
RUN_STATUS = """
query RunStatus($runId: ID!) {
  runOrError(runId: $runId) {
    __typename
    ... on Run { status }
    ... on Error { message }
  }
}
"""
RUN_MESSAGES = """
query RunMessages($runId: ID!, $cursor: String) {
  logsForRun(runId: $runId, afterCursor: $cursor) {
    __typename
    ... on EventConnection {
      cursor
      events {
        __typename
        ... on MessageEvent { message eventType level stepKey }
      }
    }
    ... on Error { message }
  }
}
"""


class DagsterRunError(GoshenError):
    """Dagster refused a run or answered with an error; the message carries Dagster's words."""


@dataclass(frozen=True)
class RunMessage:
    step: str | None
    event_type: str | None
    level: str | None
    message: str


def _graphql(url: str, query: str, variables: dict[str, Any]) -> dict[str, Any]:
    response = httpx.post(
        f"{url.rstrip('/')}/graphql", json={"query": query, "variables": variables}, timeout=30
    )
    response.raise_for_status()
    body = response.json()
    if body.get("errors"):
        raise DagsterRunError(f"Dagster's GraphQL API answered with errors: {body['errors']}")
    data: dict[str, Any] = body["data"]
    return data


def launch_job(
    url: str,
    location: str,
    job: str,
    run_config: dict[str, Any] | None = None,
    *,
    partition: str | None = None,
) -> str:
    """Launch `job` of code location `location`, for one `partition` of a partitioned job;
    the new run's id."""
    params: dict[str, Any] = {
        "selector": {
            "repositoryLocationName": location,
            "repositoryName": REPOSITORY,
            "jobName": job,
        },
        "runConfigData": run_config or {},
    }
    if partition is not None:
        # How Dagster's own UI launches a partition's run: the run carries the partition's tag.
        tags = [{"key": "dagster/partition", "value": partition}]
        params["executionMetadata"] = {"tags": tags}
    result = _graphql(url, LAUNCH_RUN, {"params": params})["launchRun"]
    if result["__typename"] == "LaunchRunSuccess":
        run_id: str = result["run"]["runId"]
        return run_id
    detail = result.get("message") or "; ".join(e["message"] for e in result.get("errors", []))
    raise DagsterRunError(f"Dagster did not launch {job}: {result['__typename']}: {detail}")


def run_status(url: str, run_id: str) -> str:
    """QUEUED, STARTING, STARTED, SUCCESS, FAILURE, CANCELED, ..."""
    result = _graphql(url, RUN_STATUS, {"runId": run_id})["runOrError"]
    if result["__typename"] != "Run":
        raise DagsterRunError(f"Dagster has no run {run_id}: {result.get('message')}")
    status: str = result["status"]
    return status


def run_messages(url: str, run_id: str, cursor: str | None) -> tuple[list[RunMessage], str | None]:
    """The run's log messages after `cursor`, and the cursor to pass next time."""
    result = _graphql(url, RUN_MESSAGES, {"runId": run_id, "cursor": cursor})["logsForRun"]
    if result["__typename"] != "EventConnection":
        raise DagsterRunError(f"Dagster cannot list the events of run {run_id}: {result}")
    messages = [
        RunMessage(
            event.get("stepKey"),
            event.get("eventType"),
            event.get("level"),
            event.get("message") or "",
        )
        for event in result["events"]
        if "message" in event
    ]
    return messages, result["cursor"]


def prepare_dagster_home(settings: Settings) -> Path:
    """Create DAGSTER_HOME with the embedded instance config, keeping an operator's edits."""
    home = settings.resolved_dagster_home
    home.mkdir(parents=True, exist_ok=True)
    instance = home / "dagster.yaml"
    if not instance.exists():
        instance.write_text(EMBEDDED_DAGSTER_INSTANCE)
    return home
