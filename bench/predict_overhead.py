"""What billing and rate limits cost /predict: Goshen API processes side by side, one with
/predict's credit (held in chunks) and rate limits on, one with only rate limits on, and two with
both off (the second measures how far identical processes differ), under the same wrk load.

    sudo apt-get install wrk
    python bench/predict_overhead.py [--duration 10] [--repeats 5] [--concurrency 1 64] [--servers]

With --servers it compares instead the two ways to serve the API, with billing and rate limits
on: `uvicorn serving.app:create_app --factory` (httptools) and `goshen api` (serving.server, h11).

The setup is bench/predict_vs_mlflow.py's (an MLflow server, the digits classifier registered and
deployed, one uvicorn process per API on one SQLite home, a developer key with credit enough that
no run ends in 402s); the APIs take turns in every repeat, in rotating order, so that the
machine's drift falls on all. The predict quota is set above what wrk can send: the runs measure
the counting, not 429s (the other settings are the defaults: in-process memory, no Redis).
Besides requests per second, it reports each API process's CPU time per request (from /proc),
which the load of a shared machine disturbs far less than throughput.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import sys
import tempfile
from contextlib import ExitStack
from pathlib import Path

import httpx
from predict_vs_mlflow import (
    MODEL,
    admin_and_developer,
    free_port,
    goshen_environment,
    process,
    register_classifier,
    run_load,
    wait_until,
)

UNLIMITED = {"GOSHEN_RATE_LIMIT_PREDICT": "100000000/minute"}
OFF = "both off"
MODES = {
    "billing and rate limits on": UNLIMITED,
    "rate limits on, billing off": {**UNLIMITED, "GOSHEN_BILLING_ENABLED": "false"},
    OFF: {"GOSHEN_RATE_LIMITS_ENABLED": "false", "GOSHEN_BILLING_ENABLED": "false"},
    # The same settings as OFF in a process of its own: how far two identical processes differ
    # on this machine (the noise floor of every other row).
    "both off, again": {"GOSHEN_RATE_LIMITS_ENABLED": "false", "GOSHEN_BILLING_ENABLED": "false"},
}


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time a process has used (Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# With --servers: the same settings (billing and rate limits on) under the two ways to serve the
# API. uvicorn picks httptools; `goshen api` (serving.server) serves with an h11 protocol of its
# own, which bounds header time and connections per client.
UVICORN = "uvicorn --factory"
GOSHEN_API = "goshen api"
SERVERS = {UVICORN: UNLIMITED, GOSHEN_API: UNLIMITED}


def serve(
    stack: ExitStack, home: Path, tracking_uri: str, changes: dict[str, str], server: str = UVICORN
) -> tuple[str, int]:
    """Start an API process on `home` for as long as `stack` is open; its URL and process id."""
    port = free_port()
    env = {**goshen_environment(home, tracking_uri, port), **changes}
    log = home.parent / f"api-{port}.log"
    if server == GOSHEN_API:
        command = [sys.executable, "-m", "goshen_launcher.cli", "api"]
    else:
        command = [sys.executable, "-m", "uvicorn", "serving.app:create_app", "--factory"]
        command += ["--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"]
    pid = stack.enter_context(process(command, env, log)).pid
    wait_until(f"http://127.0.0.1:{port}/healthz", log)
    return f"http://127.0.0.1:{port}", pid


def measure(args: argparse.Namespace) -> dict[str, dict[int, list[tuple[float, float]]]]:
    from goshen.config import Settings
    from goshen.tracking import running_tracking_server

    with tempfile.TemporaryDirectory(prefix="goshen-bench-") as folder, ExitStack() as stack:
        root = Path(folder)
        settings = Settings(_env_file=None, home=root / "mlflow-home", mlflow_port=free_port())
        tracking_uri = stack.enter_context(running_tracking_server(settings))
        _, row = register_classifier(tracking_uri, root)
        body = json.dumps({"inputs": {"features": [row]}})
        home = root / "goshen"
        with ExitStack() as setup:
            url, _ = serve(setup, home, tracking_uri, {})
            env = goshen_environment(home, tracking_uri, free_port())
            admin, key = admin_and_developer(env, url)
            deployed = httpx.post(
                f"{url}/v1/admin/models/{MODEL}/deploy",
                headers={"Authorization": f"Bearer {admin}"},
                timeout=120,
            )
            assert deployed.json()["status"] == "ready", deployed.text
        modes = SERVERS if args.servers else MODES
        urls: dict[str, str] = {}
        pids: dict[str, int] = {}
        for mode, changes in modes.items():
            server = mode if args.servers else UVICORN
            urls[mode], pids[mode] = serve(stack, home, tracking_uri, changes, server)
        headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
        for url in urls.values():  # each process loads the model on its first request
            answer = httpx.post(f"{url}/v1/models/{MODEL}/predict", content=body, headers=headers)
            assert answer.status_code == 200, answer.text
        results: dict[str, dict[int, list[tuple[float, float]]]] = {mode: {} for mode in modes}
        for repeat in range(args.repeats):
            for connections in args.concurrency:
                order = list(modes)[repeat % len(modes) :] + list(modes)[: repeat % len(modes)]
                for mode in order:
                    url = f"{urls[mode]}/v1/models/{MODEL}/predict"
                    before = cpu_seconds(pids[mode])
                    run = run_load(url, body, connections, args.duration, key)
                    assert run["errors"] == 0, f"{mode}: {run['errors']} non-2xx answers"
                    run["cpu_us"] = (
                        (cpu_seconds(pids[mode]) - before) / (run["rps"] * args.duration) * 1e6
                    )
                    results[mode].setdefault(connections, []).append((run["rps"], run["cpu_us"]))
                    print(f"{mode:<28} c={connections:<3} {run}", file=sys.stderr)
        return results


def main() -> int:
    # A SIGTERM unwinds like Ctrl-C, so the servers this started are stopped.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=int, default=10, help="seconds per run")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 64])
    parser.add_argument(
        "--servers",
        action="store_true",
        help=f"compare {UVICORN!r} with {GOSHEN_API!r} (billing and rate limits on) instead",
    )
    args = parser.parse_args()
    results = measure(args)
    base = UVICORN if args.servers else OFF
    print(
        f"| concurrency | API process | requests/s | x {base} | CPU µs per request "
        f"| x {base} |\n|---|---|---|---|---|---|"
    )
    for connections in results[base]:
        medians = {
            mode: [statistics.median(figures) for figures in zip(*runs[connections], strict=True)]
            for mode, runs in results.items()
        }
        off = medians[base]
        for mode, (rps, cpu_us) in medians.items():
            print(
                f"| {connections} | {mode} | {rps:.0f} | {rps / off[0]:.3f} | "
                f"{cpu_us:.1f} | {cpu_us / off[1]:.3f} |"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
