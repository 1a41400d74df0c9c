"""Who may import whom: the import-linter contracts in pyproject.toml hold, and they can fail."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("goshen", "serving", "goshen_pipelines", "dashboard", "goshen_launcher")
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"
CONTRACTS = [
    contract["name"]
    for contract in tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"][
        "contracts"
    ]
]


def lint_imports(cwd: Path) -> subprocess.CompletedProcess[str]:
    # lint-imports analyses the root packages found from its working directory, with the
    # contracts of the pyproject.toml there.
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache", "--no-logo"],
        cwd=cwd,
        # Wide enough that no contract's name is wrapped.
        env={**os.environ, "PYTHONPATH": str(cwd), "COLUMNS": "200"},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_code_keeps_every_contract() -> None:
    result = lint_imports(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


@pytest.mark.parametrize(
    ("package", "source", "contract"),
    [
        ("goshen", "from serving import app\n", "goshen is the shared core"),
        ("goshen", "import dagster\n", "goshen is the shared core"),
        ("serving", "import dashboard.platform_health\n", "never import each other"),
        ("goshen_pipelines", "from serving.jobs import claim\n", "never import each other"),
        ("dashboard", "import goshen_pipelines\n", "never import each other"),
        ("dashboard", "from goshen.db import models\n", "The dashboard never opens the database"),
        ("dashboard", "import sqlalchemy\n", "The dashboard never opens the database"),
        # Indirect: goshen.accounts uses goshen.db.
        ("dashboard", "from goshen import accounts\n", "The dashboard never opens the database"),
        # The pages are Streamlit scripts, outside any package, and checked all the same.
        ("dashboard.views", "import sqlalchemy\n", "The dashboard never opens the database"),
        ("dashboard.views", "import goshen_pipelines\n", "never import each other"),
        ("serving", "import goshen_launcher\n", "Only the launcher imports the launcher"),
        ("dashboard.views", "import goshen_launcher\n", "Only the launcher imports the launcher"),
    ],
)
def test_a_forbidden_import_breaks_its_contract(
    package: str, source: str, contract: str, tmp_path: Path
) -> None:
    for name in PACKAGES:
        shutil.copytree(ROOT / name, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    tmp_path.joinpath(*package.split("."), "forbidden_import.py").write_text(source)

    result = lint_imports(tmp_path)

    assert result.returncode == 1, result.stdout + result.stderr
    [broken] = [name for name in CONTRACTS if f"{name} BROKEN" in result.stdout]
    assert contract in broken
    assert re.search(rf"^-\s+{package}\.forbidden_import -> ", result.stdout, re.MULTILINE)
