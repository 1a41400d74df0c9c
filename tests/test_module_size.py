"""A module is short enough to read in one sitting: no source module passes 400 lines."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("goshen", "serving", "goshen_pipelines", "dashboard", "goshen_launcher", "bench")
MAX_LINES = 400


def test_no_source_module_is_over_400_lines() -> None:
    too_long = {
        str(path.relative_to(ROOT)): lines
        for package in PACKAGES
        for path in (ROOT / package).rglob("*.py")
        if "migrations" not in path.parts
        and (lines := len(path.read_text().splitlines())) > MAX_LINES
    }
    assert too_long == {}, f"split these by concern: {too_long}"
