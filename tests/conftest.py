"""Shared fixtures, loaded by concern from tests/fixtures/ (serving-only ones: tests/serving/).

Any test that asks for `database_url` (directly or through `settings`, `client`, ...) runs once per
backend, SQLite and PostgreSQL: see tests/fixtures/databases.py.
"""

from __future__ import annotations

import os

import pytest

pytest_plugins = [
    "tests.fixtures.databases",
    "tests.fixtures.servers",
    "tests.fixtures.storage",
    "tests.fixtures.accounts",
    "tests.fixtures.stable_diffusion",
    "tests.fixtures.models",
    "tests.fixtures.workers",
    "tests.fixtures.training",
    "tests.fixtures.cli",
    "tests.fixtures.sdk",
    "tests.fixtures.private_postgres",
]


def pytest_configure(config: pytest.Config) -> None:
    # Tests build their own settings; a developer's GOSHEN_* variables must not leak in.
    for name in [n for n in os.environ if n.startswith("GOSHEN_")]:
        if not name.startswith("GOSHEN_TEST_"):  # the tests' own: a database, a screenshots folder
            del os.environ[name]
