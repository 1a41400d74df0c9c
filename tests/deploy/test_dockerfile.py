"""The Dockerfile and .dockerignore: a wheel built in one stage, installed in CPU and CUDA images
that run as a non-root user, from a build context that carries no state, secrets or tests.

CI has no Docker: the Dockerfile is read instruction by instruction, and .dockerignore is
applied with Docker's own rules (Go's path patterns plus `**`, the last matching line wins, a
folder that matches takes its contents with it) to the repository's paths.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = (ROOT / "Dockerfile").read_text()
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


@dataclass
class Stage:
    name: str
    base: str
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [args for kw, args in self.instructions if kw == keyword]


def stages() -> dict[str, Stage]:
    """The Dockerfile's stages by name, each with its instructions (continuations joined)."""
    text = re.sub(r"\\\n(\s*#[^\n]*\n)*", " ", DOCKERFILE)
    found: dict[str, Stage] = {}
    current: Stage | None = None
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        keyword, _, args = line.partition(" ")
        if keyword.upper() == "FROM":
            base, _, name = args.partition(" AS ")
            current = found[name.strip()] = Stage(name.strip(), base.strip())
        elif current is not None:
            current.instructions.append((keyword.upper(), args.strip()))
    return found


STAGES = stages()


def arg_default(name: str) -> str:
    (value,) = re.findall(rf"^ARG {name}=(.+)$", DOCKERFILE, re.MULTILINE)
    return str(value).strip('"')


def test_images_are_multi_stage_with_cpu_and_cuda_targets() -> None:
    assert {"build", "base", "cpu", "cuda"} <= set(STAGES)
    assert STAGES["cpu"].base == STAGES["cuda"].base == "base"
    # The last stage is what a plain `docker build .` makes: the CPU image.
    assert list(STAGES)[-1] == "cpu"
    image = arg_default("PYTHON_IMAGE")
    assert re.fullmatch(r"python:3\.11\.\d+-slim-\w+", image), f"pin the base image: {image}"


def test_the_wheel_is_built_in_a_stage_and_only_the_wheel_is_installed() -> None:
    (build,) = STAGES["build"].all("RUN")
    assert build.startswith("pip wheel") and "--no-deps" in build and "--wheel-dir /dist" in build
    for target in ("cpu", "cuda"):
        stage = STAGES[target]
        assert stage.all("COPY") == ["--from=build /dist /dist"], target
        (install, *_) = stage.all("RUN")
        assert '"$(ls /dist/goshen-*.whl)[' in install, target
        assert "pip install -e" not in install and " . " not in install, target
        assert "rm -rf /dist" in install, target


@pytest.mark.parametrize("target", ["cpu", "cuda"])
def test_images_run_as_a_non_root_user(target: str) -> None:
    users = STAGES[target].all("USER")
    assert users and users[-1] not in {"root", "0", "0:0"}, target
    assert "useradd --system --uid 10001" in " ".join(STAGES["base"].all("RUN"))
    # After USER nothing installs: the code stays root's and read-only to the process.
    after_user = STAGES[target].instructions[
        [kw for kw, _ in STAGES[target].instructions].index("USER") :
    ]
    assert all(kw != "RUN" for kw, _ in after_user), target


def test_extras_installed_exist_and_the_cuda_image_has_gpu_runtimes() -> None:
    extras = set(PYPROJECT["project"]["optional-dependencies"])
    for target in ("cpu", "cuda"):
        (install, *_) = STAGES[target].all("RUN")
        wanted = re.search(r"whl\)\[([\w,]+)\]", install)
        assert wanted is not None
        assert set(wanted.group(1).split(",")) <= extras
        assert {"serving", "pipelines"} <= set(wanted.group(1).split(","))
    cuda = " ".join(STAGES["cuda"].all("RUN"))
    assert "pip uninstall --yes onnxruntime" in cuda and "onnxruntime-gpu" in cuda
    assert "download.pytorch.org/whl/cpu" not in cuda  # PyPI's Linux torch is the CUDA build
    assert "download.pytorch.org/whl/cpu" in " ".join(STAGES["cpu"].all("RUN"))


def test_dagster_deployment_libraries_match_the_pinned_dagster() -> None:
    pins = [p for p in PYPROJECT["project"]["optional-dependencies"]["pipelines"] if "==" in p]
    versions = dict(pin.split("==") for pin in pins)
    for lib in arg_default("DAGSTER_DEPLOY_LIBS").split():
        name, version = lib.split("==")
        assert version == versions["dagster-postgres"], f"{name} must match dagster-postgres"


def dockerignore_patterns() -> list[tuple[bool, re.Pattern[str]]]:
    """(excludes, regex) per .dockerignore line, in order."""
    patterns = []
    for raw in (ROOT / ".dockerignore").read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        include = line.startswith("!")
        line = line.removeprefix("!").strip("/")
        regex = ""
        for part in re.split(r"(\*\*/|\*\*|\*|\?)", line):
            regex += {"**/": "(?:.*/)?", "**": ".*", "*": "[^/]*", "?": "[^/]"}.get(
                part, re.escape(part)
            )
        patterns.append((not include, re.compile(regex + r"\Z")))
    return patterns


def ignored(path: str) -> bool:
    """Whether Docker leaves `path` out of the build context."""
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    excluded = False
    for excludes, pattern in dockerignore_patterns():
        if any(pattern.match(prefix) for prefix in prefixes):
            excluded = excludes
    return excluded


@pytest.mark.parametrize(
    "path",
    [
        ".venv/bin/python",
        ".git/HEAD",
        ".goshen/goshen.db",
        ".goshen/secret_key",
        ".env",
        "tests/conftest.py",
        "tests/fixtures/digits.csv",
        "notebooks/model_quality.py",
        "bench/queue_overhead.py",
        "docs/index.md",
        "deploy/.env",
        "goshen/__pycache__/config.cpython-311.pyc",
        "serving/routes/__pycache__/jobs.cpython-311.pyc",
        "goshen.egg-info/PKG-INFO",
    ],
)
def test_the_build_context_leaves_out(path: str) -> None:
    assert ignored(path)


def test_the_build_context_holds_what_the_wheel_is_built_from() -> None:
    copied = [args.split()[0] for args in STAGES["build"].all("COPY")]
    for source in copied:
        assert not ignored(source), source
        assert (ROOT / source).exists(), source
    # Every package setuptools finds (tool.setuptools.packages.find) is copied, with its data.
    for include in PYPROJECT["tool"]["setuptools"]["packages"]["find"]["include"]:
        assert include.removesuffix("*") in copied, include
    for path in ("goshen/config.py", "goshen/db/migrations/script.py.mako", "dashboard/app.py"):
        assert not ignored(path), path
