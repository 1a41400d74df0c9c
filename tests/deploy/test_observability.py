"""deploy/observability/: the Prometheus alert rules, the scrape config and the Grafana dashboard
are well formed, and every metric they name is exported by a real API and a real worker.

promtool is not installed here: the rules are checked as YAML for Prometheus' rule-file
structure, and each PromQL expression is read for the metric names it selects (string literals,
label matchers, ranges, label lists and function names set aside). The exported names come from
scraping `goshen api` on uvicorn and `goshen worker`'s own /metrics after both did real work: a
job queued, run by the worker and charged, and a /predict call.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from sqlalchemy.orm import Session, sessionmaker

from goshen.config import Settings
from goshen.db.models import Model, Role
from tests.deploy.test_compose import SERVICES, environment
from tests.fixtures.accounts import Account
from tests.fixtures.models import RegisteredModel, deploy_classifier
from tests.fixtures.servers import _free_port, serve_app
from tests.serving.http.metrics_scrape import names, samples
from tests.serving.worker.jobs import queue_jobs, wait_for

OBSERVABILITY = Path(__file__).resolve().parents[2] / "deploy" / "observability"
RULES: dict[str, Any] = yaml.safe_load((OBSERVABILITY / "prometheus-alerts.yml").read_text())
SCRAPE: dict[str, Any] = yaml.safe_load((OBSERVABILITY / "prometheus.yml").read_text())
DASHBOARD: dict[str, Any] = json.loads((OBSERVABILITY / "grafana-dashboard.json").read_text())
# Series Prometheus makes itself for every target.
SYNTHETIC = {"up", "scrape_duration_seconds", "scrape_samples_scraped"}
_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or"}
_KEYWORDS |= {"unless", "offset", "atan2", "inf", "nan"}
_LABEL_LIST = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)")


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`', '""', expr)
    named = set(re.findall(r'__name__\s*=~?\s*"([^"]*)"', expr))
    text = re.sub(r"\{[^{}]*\}", " ", text)  # label matchers
    text = re.sub(r"\[[^\[\]]*\]", " ", text)  # ranges and subqueries
    text = re.sub(r"\boffset\s+[-\d.]+[smhdwy]+", " ", text)
    text = _LABEL_LIST.sub(" ", text)
    text = re.sub(r"(?<![\w:])\d+(\.\d+)?([eE][+-]?\d+)?", " ", text)  # numbers
    found = {
        match.group(1)
        for match in re.finditer(r"([A-Za-z_:][\w:]*)\s*(\(?)", text)
        if not match.group(2) and match.group(1) not in _KEYWORDS
    }
    for alternatives in named:
        found |= set(alternatives.split("|"))
    return found


def alert_rules() -> list[dict[str, Any]]:
    return [rule for group in RULES["groups"] for rule in group["rules"]]


def dashboard_panels() -> list[dict[str, Any]]:
    return [
        nested
        for panel in DASHBOARD["panels"]
        for nested in [panel, *panel.get("panels", [])]
        if nested["type"] != "row"
    ]


def used_metric_names() -> dict[str, set[str]]:
    """Each metric the rules and the dashboard name, with where."""
    used: dict[str, set[str]] = {}
    expressions = [(f"alert {rule['alert']}", rule["expr"]) for rule in alert_rules()]
    for panel in dashboard_panels():
        expressions += [(f"panel {panel['title']!r}", t["expr"]) for t in panel["targets"]]
    for variable in DASHBOARD["templating"]["list"]:
        if variable["type"] == "query":
            query = variable["query"]["query"]
            inner = re.fullmatch(r"label_values\((.*),\s*\w+\)", query)
            assert inner, f"variable {variable['name']}: {query}"
            expressions.append((f"variable {variable['name']}", inner.group(1)))
    for where, expr in expressions:
        for name in metric_names(expr):
            used.setdefault(name, set()).add(where)
    return used


def test_the_expression_reader_finds_the_metrics_and_nothing_else() -> None:
    expr = (
        'histogram_quantile(0.99, sum by (le, model) (rate(a_seconds_bucket{model=~"$m"}'
        "[$__rate_interval]))) / on (model) group_left sum(b_total offset 5m) > 1e6 "
        'and delta(max(c{reason="x y"})[1h:5m]) or vector(0)'
    )
    assert metric_names(expr) == {"a_seconds_bucket", "b_total", "c"}
    assert metric_names('{__name__=~"d|e_count"}') == {"d", "e_count"}


def test_alert_rules_have_prometheus_rule_file_structure() -> None:
    assert set(RULES) == {"groups"}
    groups = RULES["groups"]
    assert len({group["name"] for group in groups}) == len(groups)
    alerts = [rule["alert"] for rule in alert_rules()]
    assert len(set(alerts)) == len(alerts), "alert names repeat"
    duration = re.compile(r"^(\d+[smhdwy])+$")
    for rule in alert_rules():
        assert set(rule) <= {"alert", "expr", "for", "keep_firing_for", "labels", "annotations"}
        assert isinstance(rule["expr"], str) and rule["expr"].strip(), rule["alert"]
        assert rule["expr"].count("(") == rule["expr"].count(")"), rule["alert"]
        assert "for" not in rule or duration.match(rule["for"]), rule["alert"]
        assert rule["labels"]["severity"] in {"critical", "warning", "info"}, rule["alert"]
        assert rule["annotations"]["summary"], rule["alert"]
    # What an operator must hear about.
    assert {"GoshenQueueStuck", "GoshenNoWorkerAlive", "GoshenApiErrorRate"} <= set(alerts)
    assert "GoshenWebhookBacklog" in alerts


def test_dashboard_is_a_grafana_model_whose_panels_do_not_overlap() -> None:
    assert DASHBOARD["uid"] and DASHBOARD["title"] and DASHBOARD["schemaVersion"] >= 36
    ids = [panel["id"] for panel in DASHBOARD["panels"]]
    assert len(set(ids)) == len(ids)
    cells: dict[tuple[int, int], str] = {}
    for panel in DASHBOARD["panels"]:
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["x"] + grid["w"] <= 24, panel["title"]
        for x in range(grid["x"], grid["x"] + grid["w"]):
            for y in range(grid["y"], grid["y"] + grid["h"]):
                assert (x, y) not in cells, f"{panel['title']} overlaps {cells[(x, y)]}"
                cells[(x, y)] = panel["title"]
    variables = {variable["name"] for variable in DASHBOARD["templating"]["list"]}
    for panel in dashboard_panels():
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        assert panel["targets"], panel["title"]
        refs = [target["refId"] for target in panel["targets"]]
        assert len(set(refs)) == len(refs), panel["title"]
        for target in panel["targets"]:
            assert target["expr"].count("(") == target["expr"].count(")"), panel["title"]
            for variable in re.findall(r"\$(\w+)", target["expr"]):
                assert variable in variables | {"__rate_interval"}, panel["title"]
    assert {"datasource", "model"} <= variables


def test_prometheus_scrapes_the_api_replicas_and_workers_of_the_compose_stack() -> None:
    jobs = {job["job_name"]: job for job in SCRAPE["scrape_configs"]}
    (api,) = jobs["goshen-api"]["dns_sd_configs"]
    assert api["names"] == ["api"]
    assert str(api["port"]) == environment("api")["GOSHEN_API_PORT"]
    (workers,) = jobs["goshen-worker"]["dns_sd_configs"]
    assert set(workers["names"]) == {"worker", "worker-cpu"}
    for name in workers["names"]:
        assert str(workers["port"]) == environment(name)["GOSHEN_WORKER_METRICS_PORT"], name
    prometheus, grafana = SERVICES["prometheus"], SERVICES["grafana"]
    mounts = {m["target"]: m["source"] for m in prometheus["volumes"] if isinstance(m, dict)}
    (rules,) = SCRAPE["rule_files"]
    assert mounts[rules] == "./observability/prometheus-alerts.yml"
    assert mounts["/etc/prometheus/prometheus.yml"] == "./observability/prometheus.yml"
    deploy = OBSERVABILITY.parent
    for mount in [*prometheus["volumes"], *grafana["volumes"]]:
        if isinstance(mount, dict):
            assert (deploy / mount["source"]).exists(), mount["source"]
            assert mount["read_only"] is True
    assert grafana["depends_on"] == {"prometheus": {"condition": "service_healthy"}}
    datasource = yaml.safe_load(
        (OBSERVABILITY / "grafana-provisioning" / "datasources" / "prometheus.yml").read_text()
    )
    assert datasource["datasources"][0]["url"] == "http://prometheus:9090"


@pytest.fixture
def served(serving_settings: Settings) -> Iterator[Settings]:
    with serve_app(serving_settings) as api:
        api.app.state.api.metrics.figures.seconds = 0  # each scrape reads the database
        yield api.settings


def test_every_metric_the_rules_and_the_dashboard_name_is_exported(
    served: Settings,
    sessions: sessionmaker[Session],
    make_account: Callable[..., Account],
    digits_model: Model,
    register_classifier: Callable[..., RegisteredModel],
    start_worker: Callable[..., threading.Event],
) -> None:
    admin, developer = make_account(Role.admin), make_account(Role.developer)
    with httpx.Client(base_url=served.api_url, timeout=60) as api:
        register_classifier("observed")
        deploy_classifier(api, admin.headers, "observed")
        predicted = api.post(
            "/v1/models/observed/predict",
            json={"inputs": {"features": [[0.5] * 64]}},
            headers=developer.headers,
        )
        assert predicted.status_code == 200, predicted.text
        job_ids = queue_jobs(sessions, developer, digits_model, 1, num_inference_steps=40)
        exported = names(samples(api.get("/metrics").text))  # the job queued

        port = _free_port()
        start_worker(step_seconds=0.05, worker_metrics_port=port)
        wait_for(sessions, job_ids, lambda job: job.status == "running")
        exported |= names(samples(api.get("/metrics").text))  # the job running
        wait_for(sessions, job_ids, lambda job: job.status == "succeeded")
        deadline = time.monotonic() + 10
        while "goshen_job_run_seconds_count" not in exported:
            assert time.monotonic() < deadline, "the worker did not count its batch"
            exported |= names(samples(httpx.get(f"http://127.0.0.1:{port}/metrics").text))
            time.sleep(0.1)
        exported |= names(samples(api.get("/metrics").text))

    missing = {
        name: sorted(where)
        for name, where in used_metric_names().items()
        if name not in exported and name not in SYNTHETIC
    }
    assert missing == {}, "named in deploy/observability/ but exported by no process"
