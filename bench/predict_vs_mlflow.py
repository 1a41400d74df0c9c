"""Goshen's /predict against `mlflow models serve`, on the same model version and the same load.

    python bench/predict_vs_mlflow.py [--duration 10] [--repeats 3] [--concurrency 1 16 64]
                                      [--database-url postgresql://postgres@127.0.0.1:5432/postgres]
                                      [--uvicorn] [--out figures.json]

Everything runs on loopback in a temporary folder: an MLflow tracking server; the digits
classifier (trained for a few epochs on scikit-learn's digits, exported to ONNX and registered
as digits-classifier v1, as the Dagster pipeline does); `mlflow models serve` of that version
with 1 worker; and Goshen's API as production runs it, one `goshen api` process (serving.server:
uvloop and httptools, with its header timeout and per-client connection cap) on a fresh
PostgreSQL database (dropped afterwards), with billing and rate limits on (the predict quota set
above what the load can send, so the runs measure the counting, not 429s) and the built-in
digits-classifier entry deployed on the same version. wrk (`sudo apt-get install wrk`; without
it, bench/load/closed_loop.py, a Python stand-in measuring the same things) sends the same
one-row request in MLflow's tensor format to both, at each concurrency, the servers taking
turns, and reports throughput, p50 and p99. A third row runs Goshen with dynamic batching off
(max_batch_size 1), to show what batching adds; `--uvicorn` adds a row for the same app under
`uvicorn serving.app:create_app --factory`, on the same database.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import httpx
import numpy as np

MODEL = "digits-classifier"
DEFAULT_SERVER = "postgresql://postgres@127.0.0.1:5432/postgres"
CLOSED_LOOP = Path(__file__).resolve().parent / "load" / "closed_loop.py"
GOSHEN_API = [sys.executable, "-m", "goshen_launcher.cli", "api"]
WRK_SCRIPT = """wrk.method = "POST"
wrk.body = [==[{body}]==]
wrk.headers["Content-Type"] = "application/json"
{auth}"""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_until(url: str, log: Path, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=2).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    tail = log.read_text(errors="replace")[-3000:]
    raise TimeoutError(f"{url} did not answer within {timeout:.0f} s; {log}:\n{tail}")


@contextmanager
def process(argv: list[str], env: dict[str, str], log: Path) -> Iterator[subprocess.Popen]:
    with log.open("wb") as out:
        child = subprocess.Popen(
            argv, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        yield child
    finally:
        os.killpg(child.pid, signal.SIGTERM)
        try:
            child.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(child.pid, signal.SIGKILL)


def register_classifier(tracking_uri: str, workdir: Path) -> tuple[str, list[float]]:
    """The digits classifier, trained briefly, registered as a new version; (version, a row)."""
    import mlflow
    import onnx
    from sklearn.datasets import load_digits

    from goshen import registry
    from goshen_pipelines.lib import export
    from goshen_pipelines.lib.classifier import DIGITS_CLASSIFIER_CONFIG, train_classifier
    from goshen_pipelines.lib.digits import classifier_features

    digits = load_digits()
    features = classifier_features(digits.images / 16.0)
    config = DIGITS_CLASSIFIER_CONFIG.__class__(
        **{**DIGITS_CLASSIFIER_CONFIG.__dict__, "epochs": 5}
    )
    trained = train_classifier(features, digits.target, config)
    path = export.export_tabular_model(trained, workdir / "model.onnx", features)
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)
    mlflow.set_experiment("bench")
    metadata = {
        "kind": "onnx",
        "task": "classification",
        "classes": [str(c) for c in trained.classes],
        "input_ranges": {"features": list(export.feature_range(features))},
    }
    with mlflow.start_run():
        version = registry.log_onnx_model(
            onnx.load(str(path)),
            MODEL,
            metadata=metadata,
            tags={registry.CHECKS_TAG: "true", registry.METRIC_TAG: "0"},
        )
    mlflow.MlflowClient().set_registered_model_alias(MODEL, registry.PRODUCTION, version.version)
    return version.version, features[0].astype(float).tolist()


def run_load(url: str, body: str, connections: int, seconds: int, key: str | None) -> dict:
    """wrk's figures for `connections` connections sending `body` to `url` for `seconds`
    (bench/load/closed_loop.py's when wrk is not installed)."""
    if shutil.which("wrk") is None:
        return run_closed_loop(url, body, connections, seconds, key)
    auth = f'wrk.headers["Authorization"] = "Bearer {key}"' if key else ""
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write(WRK_SCRIPT.format(body=body, auth=auth))
    try:
        command = ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency"]
        command += ["--timeout", "10s", "-s", script.name, url]
        result = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    finally:
        os.unlink(script.name)
    return parse_wrk(result)


def run_closed_loop(url: str, body: str, connections: int, seconds: int, key: str | None) -> dict:
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as request:
        request.write(body)
    command = [sys.executable, str(CLOSED_LOOP), url, "--connections", str(connections)]
    command += ["--duration", str(seconds), "--body-file", request.name]
    if key:
        command += ["--header", f"Authorization: Bearer {key}"]
    try:
        output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    finally:
        os.unlink(request.name)
    return json.loads(output)


def parse_wrk(output: str) -> dict:
    """Requests per second, p50 and p99 in ms, and non-2xx answers from wrk's report."""

    def milliseconds(label: str) -> float:
        value, unit = re.search(rf"\s{label}\s+([\d.]+)(us|ms|s)", output).groups()
        return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]

    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    return {
        "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1)),
        "p50_ms": milliseconds("50%"),
        "p99_ms": milliseconds("99%"),
        "errors": int(errors.group(1)) if errors else 0,
    }


def batching(api: str) -> tuple[float, float]:
    """(requests, model calls) /predict has served the benchmark's model, from /metrics."""
    text = httpx.get(f"{api}/metrics").text

    def total(series: str) -> float:
        found = re.search(rf'^{series}{{model="{MODEL}"}} ([\d.e+]+)$', text, re.MULTILINE)
        return float(found.group(1)) if found else 0.0

    return total("goshen_predict_batch_requests_sum"), total("goshen_predict_batch_requests_count")


def goshen_environment(
    home: Path, tracking_uri: str, port: int, database_url: str | None = None
) -> dict[str, str]:
    """An API process's variables: its home (and database, else SQLite in the home), the
    tracking server, credit enough that no run ends in 402s."""
    database = {"GOSHEN_DATABASE_URL": database_url} if database_url else {}
    return {
        **os.environ,
        **database,
        "GOSHEN_HOME": str(home),
        "GOSHEN_API_PORT": str(port),
        "GOSHEN_MLFLOW_TRACKING_URI": tracking_uri,
        "GOSHEN_LOG_LEVEL": "WARNING",
        "GOSHEN_NEW_USER_CREDITS": "1000000000",
    }


def admin_and_developer(env: dict[str, str], api: str) -> tuple[str, str]:
    created = subprocess.run(
        [
            sys.executable,
            "-m",
            "goshen_launcher.cli",
            "admin",
            "create",
            "--email",
            "bench@example.com",
        ],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    admin = created.stdout.strip().splitlines()[-1]
    headers = {"Authorization": f"Bearer {admin}"}
    user = httpx.post(f"{api}/v1/admin/users", json={"email": "dev@b.example"}, headers=headers)
    key = httpx.post(
        f"{api}/v1/admin/users/{user.json()['id']}/keys", json={"name": "bench"}, headers=headers
    )
    return admin, key.json()["key"]


def start_goshen(stack: ExitStack, command: list[str], env: dict[str, str], log: Path) -> str:
    """An API process on `env`'s port, for as long as `stack` is open; its URL."""
    port = env["GOSHEN_API_PORT"]
    stack.enter_context(process(command, env, log))
    wait_until(f"http://127.0.0.1:{port}/healthz", log)
    return f"http://127.0.0.1:{port}"


def measure(args: argparse.Namespace) -> dict:
    from tenant_burst import fresh_database

    from goshen.config import Settings
    from goshen.tracking import running_tracking_server

    with tempfile.TemporaryDirectory(prefix="goshen-bench-") as folder, ExitStack() as stack:
        root = Path(folder)
        settings = Settings(_env_file=None, home=root / "mlflow-home", mlflow_port=free_port())
        tracking_uri = stack.enter_context(running_tracking_server(settings))
        version, row = register_classifier(tracking_uri, root)
        body = json.dumps({"inputs": {"features": [row]}})

        mlflow_port = free_port()
        # MLflow starts `uvicorn` from PATH: this environment's, as for Goshen.
        path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
        mlflow_env = {**os.environ, "MLFLOW_TRACKING_URI": tracking_uri, "PATH": path}
        serve = [
            sys.executable,
            "-m",
            "mlflow",
            "models",
            "serve",
            "-m",
            f"models:/{MODEL}/{version}",
        ]
        serve += ["--env-manager", "local", "-h", "127.0.0.1", "-p", str(mlflow_port), "-w", "1"]
        stack.enter_context(process(serve, mlflow_env, root / "mlflow-serve.log"))
        wait_until(f"http://127.0.0.1:{mlflow_port}/ping", root / "mlflow-serve.log")

        database_url = stack.enter_context(fresh_database(args.database_url))
        home = root / "goshen"
        env = goshen_environment(home, tracking_uri, free_port(), database_url)
        # Billing and rate limits on (the defaults), the predict quota above what the load sends.
        env["GOSHEN_RATE_LIMIT_PREDICT"] = "100000000/minute"
        api = start_goshen(stack, GOSHEN_API, env, root / "goshen-api.log")
        admin, developer = admin_and_developer(env, api)
        admin_headers = {"Authorization": f"Bearer {admin}"}
        deployed = httpx.post(
            f"{api}/v1/admin/models/{MODEL}/deploy", headers=admin_headers, timeout=120
        )
        assert deployed.json()["status"] == "ready", deployed.text

        # name: (the server's URL, the URL loaded, key, max_batch_size for Goshen's entry)
        targets = {
            "mlflow models serve": (None, f"http://127.0.0.1:{mlflow_port}/invocations", None, 0),
            "goshen": (api, f"{api}/v1/models/{MODEL}/predict", developer, 64),
        }
        if args.uvicorn:
            uvicorn_env = {**env, "GOSHEN_API_PORT": str(free_port())}
            uvicorn = [sys.executable, "-m", "uvicorn", "serving.app:create_app", "--factory"]
            uvicorn += ["--host", "127.0.0.1", "--port", uvicorn_env["GOSHEN_API_PORT"]]
            uvicorn += ["--log-level", "warning"]
            other = start_goshen(stack, uvicorn, uvicorn_env, root / "goshen-uvicorn.log")
            predict = f"{other}/v1/models/{MODEL}/predict"
            targets["goshen, uvicorn --factory"] = (other, predict, developer, 64)
        targets["goshen, batching off"] = (api, f"{api}/v1/models/{MODEL}/predict", developer, 1)
        same = [
            httpx.post(
                url,
                content=body,
                headers={"Content-Type": "application/json"}
                | ({"Authorization": f"Bearer {key}"} if key else {}),
            ).json()
            for _, url, key, _ in list(targets.values())[:2]
        ]
        results: dict[str, dict[int, list[dict]]] = {name: {} for name in targets}
        for _ in range(args.repeats):
            for connections in args.concurrency:
                for name, (server, url, key, batch) in targets.items():
                    if server is not None:
                        # Sent to the process measured next, which reloads the model at once.
                        httpx.patch(
                            f"{server}/v1/admin/models/{MODEL}",
                            json={"max_batch_size": batch},
                            headers=admin_headers,
                        )
                        httpx.post(
                            url,
                            content=body,
                            headers={
                                "Content-Type": "application/json",
                                "Authorization": f"Bearer {key}",
                            },
                        )
                        before = batching(server)
                    run = run_load(url, body, connections, args.duration, key)
                    if server is not None:
                        after = batching(server)
                        calls = after[1] - before[1]
                        run["requests_per_call"] = (after[0] - before[0]) / calls if calls else 0
                    results[name].setdefault(connections, []).append(run)
                    print(f"{name:<26} c={connections:<3} {run}", file=sys.stderr)
        return {
            "version": version,
            "answers": same,
            "results": results,
            "load_generator": "wrk" if shutil.which("wrk") else "bench/load/closed_loop.py",
        }


def summarize(figures: dict) -> str:
    """A Markdown table of the medians over repeats; the ratios are to MLflow's throughput and
    p99 at the same concurrency."""
    rows = [
        "| server | concurrency | requests/s | x MLflow | p50 | p99 | p99 / MLflow's "
        "| requests per model call | non-2xx |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    results = figures["results"]
    baseline = {
        connections: {key: statistics.median(run[key] for run in runs) for key in ("rps", "p99_ms")}
        for connections, runs in results["mlflow models serve"].items()
    }
    for name, by_concurrency in results.items():
        for connections, runs in by_concurrency.items():
            median = {key: statistics.median(run[key] for run in runs) for key in runs[0]}
            merged = f"{median['requests_per_call']:.2f}" if "requests_per_call" in median else "-"
            mlflow = baseline[connections]
            rows.append(
                f"| {name} | {connections} | {median['rps']:.0f} | "
                f"{median['rps'] / mlflow['rps']:.2f} | {median['p50_ms']:.2f} ms | "
                f"{median['p99_ms']:.2f} ms | {median['p99_ms'] / mlflow['p99_ms']:.2f} | "
                f"{merged} | {int(sum(r['errors'] for r in runs))} |"
            )
    return "\n".join(rows)


def main() -> int:
    # A SIGTERM unwinds like Ctrl-C, so the servers this started are stopped.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=int, default=10, help="seconds per run")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16, 64])
    parser.add_argument(
        "--database-url", default=DEFAULT_SERVER, help="a PostgreSQL server to make a database on"
    )
    parser.add_argument("--uvicorn", action="store_true", help="add `uvicorn --factory`'s row")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    figures = measure(args)
    print(summarize(figures))
    if args.out:
        args.out.write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    np.set_printoptions(precision=4)
    sys.exit(main())
