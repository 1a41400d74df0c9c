"""Packaging by surface: the SDK, the settings and the dashboard load without the heavy stacks."""

from __future__ import annotations

import ast
import os
import shutil
import socket
import subprocess
import sys
import textwrap
import tomllib
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Not in the base install nor the dashboard extra; the SDK, the settings and the dashboard must
# import without any of them.
HEAVY = ("torch", "diffusers", "onnxruntime", "dagster", "mlflow", "sqlalchemy")

# Runs in a fresh interpreter: a finder ahead of all others makes the heavy packages unimportable.
BLOCKER = textwrap.dedent(
    """
    import importlib, runpy, sys

    BLOCKED = set(sys.argv[1].split(","))

    class Uninstalled:
        @staticmethod
        def find_spec(name, path=None, target=None):
            if name.partition(".")[0] in BLOCKED:
                raise ModuleNotFoundError(f"No module named {name!r} (blocked)", name=name)
            return None

    sys.meta_path.insert(0, Uninstalled)
    for name in BLOCKED:
        try:
            importlib.import_module(name)
        except ImportError:
            pass
        else:
            sys.exit(f"the blocker let {name} through")

    for name in ("goshen.client", "goshen.config", "dashboard.platform_health"):
        importlib.import_module(name)
    for argument in sys.argv[2:]:
        kind, _, name = argument.partition(":")
        if kind == "module":
            importlib.import_module(name)
        else:
            runpy.run_path(name, run_name="__main__")
    print("imported without", ", ".join(sorted(BLOCKED)))
    """
)


def run_blocked(tmp_path: Path, *runs: str) -> subprocess.CompletedProcess[str]:
    """Run `script:<path>` and import `module:<name>` entries with the heavy packages blocked."""
    # A bound socket that never listens refuses at once: the health page finds the API down.
    with socket.socket() as closed_port:
        closed_port.bind(("127.0.0.1", 0))
        env = {
            **os.environ,
            "PYTHONPATH": str(ROOT),
            "GOSHEN_HOME": str(tmp_path / "home"),
            "GOSHEN_API_PORT": str(closed_port.getsockname()[1]),
            "STREAMLIT_LOGGER_LEVEL": "error",
        }
        return subprocess.run(
            [sys.executable, "-c", BLOCKER, ",".join(HEAVY), *runs],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )


def dashboard_imports() -> list[str]:
    """Every module the dashboard's page scripts import (the pages behind the sign-in cannot
    run in bare mode, with no session to sign in)."""
    views = sorted((ROOT / "dashboard" / "views").glob("*.py"))
    assert len(views) > 8, "the dashboard's pages moved: name their folder here"
    names = set()
    for view in views:
        for node in ast.walk(ast.parse(view.read_text())):
            if isinstance(node, ast.Import):
                names.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module:
                names.add(node.module)
                names.update(
                    f"{node.module}.{alias.name}"
                    for alias in node.names
                    if node.module == "dashboard"
                )
    return sorted(names)


def test_sdk_settings_and_dashboard_import_without_heavy_packages(tmp_path: Path) -> None:
    # The app, the sign-in and health pages run in Streamlit's bare mode (signed out, as a new
    # visitor sees them); every other page's imports are imported.
    runs = [
        f"script:{ROOT / 'dashboard' / path}"
        for path in ("app.py", "views/health.py", "views/sign_in.py")
    ]
    modules = [f"module:{name}" for name in dashboard_imports()]
    assert "module:dashboard.jobs_data" in modules and "module:goshen.client" in modules
    result = run_blocked(tmp_path, *runs, *modules)
    assert result.returncode == 0, result.stderr
    assert result.stdout.endswith(f"imported without {', '.join(sorted(HEAVY))}\n")


def test_a_script_that_needs_a_heavy_package_fails_under_the_blocker(tmp_path: Path) -> None:
    uses_sqlalchemy = tmp_path / "uses_sqlalchemy.py"
    uses_sqlalchemy.write_text("import sqlalchemy.engine\n")
    result = run_blocked(tmp_path, f"script:{uses_sqlalchemy}")
    assert result.returncode != 0
    assert "ModuleNotFoundError: No module named 'sqlalchemy' (blocked)" in result.stderr


def test_the_goshen_command_runs_without_heavy_packages(tmp_path: Path) -> None:
    # The developer's commands on a base install: `goshen` loads, answers --help, and reaches
    # the API (here a closed port: exit 7), importing no surface and no heavy library.
    script = tmp_path / "goshen_commands.py"
    script.write_text(
        textwrap.dedent(
            """
            import os, sys
            from goshen_launcher.cli import main

            assert main(["--help"]) == 0
            assert main(["generate", "--help"]) == 0
            os.environ["GOSHEN_API_KEY"] = "gsk_x"
            os.environ["GOSHEN_API_URL"] = "http://127.0.0.1:" + os.environ["GOSHEN_API_PORT"]
            assert main(["keys", "create", "ci"]) == 7
            loaded = {name.partition(".")[0] for name in sys.modules}
            assert not loaded & {"serving", "goshen_pipelines", "streamlit"}, loaded
            """
        )
    )
    result = run_blocked(tmp_path, f"script:{script}")
    assert result.returncode == 0, result.stderr
    assert "goshen: cannot reach the API at" in result.stderr


@pytest.mark.slow
def test_base_install_imports_the_sdk(tmp_path: Path) -> None:
    # A copy, so that building the editable install writes nothing into the checkout.
    source = tmp_path / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    for package in ("goshen", "serving", "goshen_pipelines", "dashboard", "goshen_launcher"):
        shutil.copytree(
            ROOT / package, source / package, ignore=shutil.ignore_patterns("__pycache__")
        )
    base = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]

    environment = tmp_path / "venv"
    venv.create(environment, with_pip=True)
    python = environment / "bin" / "python"

    def run(*command: str) -> str:
        result = subprocess.run(
            [str(python), *command], cwd=tmp_path, capture_output=True, text=True, timeout=600
        )
        assert result.returncode == 0, result.stdout + result.stderr
        return result.stdout

    run("-m", "pip", "install", "--quiet", "--no-deps", "-e", str(source))
    run("-m", "pip", "install", "--quiet", *base)
    imported = run(
        "-c",
        "import importlib.util, goshen.client, goshen.config; "
        "goshen.config.load_settings(_env_file=None); "
        f"print([n for n in {HEAVY!r} if importlib.util.find_spec(n)])",
    )
    assert imported.strip() == "[]"
