"""The README is the front door: it documents every setting and the commands CI runs."""

from __future__ import annotations

import re
from pathlib import Path

from goshen.config import ENV_PREFIX, Settings

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


# Variables read by something other than the platform's Settings: the test suite, and the SDK
# and the `goshen` command on a developer's machine.
NOT_SETTINGS = {"GOSHEN_TEST_DATABASE_URL", "GOSHEN_API_URL", "GOSHEN_API_KEY"}


def test_every_setting_is_documented() -> None:
    documented = set(re.findall(r"`(GOSHEN_[A-Z0-9_]+)`", README))
    settings = {ENV_PREFIX + name.upper() for name in Settings.model_fields}
    assert settings - documented == set()
    assert documented - settings == NOT_SETTINGS


def test_ci_runs_the_readmes_test_command() -> None:
    assert "make test" in README and "make demo" in README
    assert "make test" in (ROOT / ".ci" / "run").read_text()
