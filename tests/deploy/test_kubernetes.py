"""deploy/kubernetes/: valid for a pinned Kubernetes version, and true to how Goshen runs there.

No cluster here: the manifests are checked against that version's OpenAPI schemas with
kubernetes-validate (the `dev` extra's, strict: unknown fields fail), then loaded to check the
invariants a schema cannot see (probes, GPU requests, selectors that select, secrets in Secrets).
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from goshen.config import ENV_PREFIX, Settings

KUBERNETES = Path(__file__).resolve().parents[2] / "deploy" / "kubernetes"
# The oldest Kubernetes the manifests are checked against (each field they use exists there).
KUBERNETES_VERSION = "1.35.0"
MANIFEST_FILES = sorted([*KUBERNETES.glob("*.yaml"), *KUBERNETES.glob("examples/*.yaml")])
RESOURCES: list[dict[str, Any]] = [
    doc for path in MANIFEST_FILES for doc in yaml.safe_load_all(path.read_text()) if doc
]
HELM_VALUES: dict[str, Any] = yaml.safe_load(
    (KUBERNETES / "helm" / "dagster-values.yaml").read_text()
)
SETTINGS = {ENV_PREFIX + name.upper() for name in Settings.model_fields}
# Settings that hold a password or a key: only ever from a Secret.
SECRET_SETTINGS = {
    "GOSHEN_SECRET_KEY",
    "GOSHEN_DATABASE_URL",
    "GOSHEN_S3_ACCESS_KEY_ID",
    "GOSHEN_S3_SECRET_ACCESS_KEY",
    "GOSHEN_STRIPE_WEBHOOK_SECRET",
    "GOSHEN_MLFLOW_BACKEND_STORE_URI",
    "GOSHEN_DASHBOARD_API_KEY",
}


def of_kind(kind: str) -> list[dict[str, Any]]:
    return [resource for resource in RESOURCES if resource["kind"] == kind]


def named(kind: str, name: str) -> dict[str, Any]:
    (found,) = [r for r in of_kind(kind) if r["metadata"]["name"] == name]
    return found


def pod_specs() -> list[tuple[str, dict[str, Any]]]:
    """(name, pod spec) of every Deployment and Job."""
    return [
        (r["metadata"]["name"], r["spec"]["template"]["spec"])
        for r in RESOURCES
        if r["kind"] in {"Deployment", "Job"}
    ]


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(key) == value for key, value in selector.items())


def test_manifests_are_valid_for_the_pinned_kubernetes_version() -> None:
    script = Path(sys.executable).parent / "kubernetes-validate"
    assert script.exists(), f"kubernetes-validate is not installed next to {sys.executable}"
    checked = subprocess.run(
        [script, "--strict", "--quiet", "-k", KUBERNETES_VERSION, *MANIFEST_FILES],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert {r["metadata"].get("namespace", "goshen") for r in RESOURCES} == {"goshen"}


def test_every_deployment_has_probes_requests_and_runs_as_non_root() -> None:
    assert {r["metadata"]["name"] for r in of_kind("Deployment")} >= {
        "goshen-api",
        "goshen-webhooks",
        "goshen-dashboard",
        "goshen-mlflow",
    }
    for deployment in of_kind("Deployment"):
        pod = deployment["spec"]["template"]["spec"]
        name = deployment["metadata"]["name"]
        # The restricted Pod Security Standard, which the namespace warns about.
        assert pod["securityContext"]["runAsNonRoot"] is True, name
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}, name
        for container in pod["containers"]:
            assert "livenessProbe" in container and "readinessProbe" in container, name
            requests = container["resources"]["requests"]
            assert "cpu" in requests and "memory" in requests, name
            assert "memory" in container["resources"]["limits"], name
            assert container["securityContext"]["allowPrivilegeEscalation"] is False, name
            assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}, name


def test_one_worker_deployment_per_gpu_class_each_pod_one_gpu() -> None:
    deployments = of_kind("Deployment")
    workers = [r for r in deployments if r["metadata"]["name"].startswith("goshen-worker")]
    assert len(workers) >= 2
    classes = set()
    for worker in workers:
        pod = worker["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        assert container["command"] == ["goshen", "worker"]
        assert container["image"].endswith("-cuda")
        resources = container["resources"]
        assert resources["requests"]["nvidia.com/gpu"] == resources["limits"]["nvidia.com/gpu"] == 1
        assert pod["nodeSelector"], worker["metadata"]["name"]
        assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod[
            "tolerations"
        ]
        classes.add(tuple(sorted(pod["nodeSelector"].items())))
        # The selector keeps each class's pods apart from the other classes'.
        assert worker["spec"]["selector"]["matchLabels"]["goshen.dev/gpu-class"]
    assert len(classes) == len(workers), "two worker Deployments select the same GPU class"


def test_the_hpa_scales_the_api_on_cpu() -> None:
    hpa = named("HorizontalPodAutoscaler", "goshen-api")
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", "goshen-api")
    api = named("Deployment", target["name"])
    (metric,) = hpa["spec"]["metrics"]
    assert metric["resource"]["name"] == "cpu"
    # Utilization is a share of the request: without one the HPA cannot scale.
    assert api["spec"]["template"]["spec"]["containers"][0]["resources"]["requests"]["cpu"]
    assert hpa["spec"]["minReplicas"] >= 2


def test_services_and_disruption_budgets_select_pods() -> None:
    templates = [
        (d["spec"]["template"]["metadata"]["labels"], d["spec"]["template"]["spec"])
        for d in of_kind("Deployment")
    ]
    for service in of_kind("Service"):
        matches = [pod for labels, pod in templates if selects(service["spec"]["selector"], labels)]
        assert matches, f"Service {service['metadata']['name']} selects no pods"
        containers = [container for pod in matches for container in pod["containers"]]
        ports = {port["name"] for container in containers for port in container.get("ports", [])}
        for port in service["spec"]["ports"]:
            assert port["targetPort"] in ports, service["metadata"]["name"]
    assert of_kind("PodDisruptionBudget")
    for budget in of_kind("PodDisruptionBudget"):
        selector = budget["spec"]["selector"]["matchLabels"]
        assert any(selects(selector, labels) for labels, _ in templates), budget["metadata"]


def test_the_migration_job_runs_goshen_db_upgrade() -> None:
    (job,) = of_kind("Job")
    pod = job["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["command"] == ["goshen", "db", "upgrade"]
    assert pod["restartPolicy"] == "Never"
    assert {"secretRef": {"name": "goshen-secrets"}} in container["envFrom"]


def test_secrets_come_from_secrets_and_every_goshen_name_is_a_setting() -> None:
    (settings,) = of_kind("ConfigMap")
    assert set(settings["data"]) <= SETTINGS
    assert set(settings["data"]) & SECRET_SETTINGS == set()
    for secret in of_kind("Secret"):
        names = {name for name in secret["stringData"] if name.startswith(ENV_PREFIX)}
        assert names <= SETTINGS, secret["metadata"]["name"]
    for name, pod in pod_specs():
        for container in pod["containers"]:
            env = container.get("env", [])
            assert {e["name"] for e in env if e["name"].startswith(ENV_PREFIX)} <= SETTINGS, name
            for entry in env:
                assert entry["name"] not in SECRET_SETTINGS or "value" not in entry, name
            if name != "goshen-dashboard":  # it talks to the API only, and holds no secret
                assert {"secretRef": {"name": "goshen-secrets"}} in container["envFrom"], name


def test_images_are_pinned_to_one_release() -> None:
    tags = set()
    for name, pod in pod_specs():
        for container in pod["containers"]:
            repository, _, tag = container["image"].rpartition(":")
            assert repository and tag not in {"", "latest"}, name
            tags.add(tag.removesuffix("-cpu").removesuffix("-cuda"))
    assert len(tags) == 1


def test_dagster_chart_values_launch_each_run_on_a_gpu_node() -> None:
    launcher = HELM_VALUES["runLauncher"]
    assert launcher["type"] == "K8sRunLauncher"
    run = launcher["config"]["k8sRunLauncher"]["runK8sConfig"]
    resources = run["containerConfig"]["resources"]
    assert resources["requests"]["nvidia.com/gpu"] == resources["limits"]["nvidia.com/gpu"] == 1
    assert run["podSpecConfig"]["nodeSelector"]
    (location,) = HELM_VALUES["dagster-user-deployments"]["deployments"]
    assert location["dagsterApiGrpcArgs"] == ["-m", "goshen_pipelines.definitions"]
    assert importlib.util.find_spec("goshen_pipelines.definitions") is not None
    assert location["image"]["tag"].endswith("-cuda")


def test_dagster_chart_values_run_one_daemon_on_external_postgresql() -> None:
    daemon = HELM_VALUES["dagsterDaemon"]
    # The chart runs exactly one daemon and has no replica count for it; keep it that way.
    assert daemon["enabled"] is True and "replicaCount" not in daemon
    assert daemon["runCoordinator"]["type"] == "QueuedRunCoordinator"
    assert HELM_VALUES["postgresql"]["enabled"] is False
    assert HELM_VALUES["generatePostgresqlPasswordSecret"] is False
    secret = HELM_VALUES["global"]["postgresqlSecretName"]
    assert "postgresql-password" in named("Secret", secret)["stringData"]
    assert HELM_VALUES["computeLogManager"]["type"] == "S3ComputeLogManager"
