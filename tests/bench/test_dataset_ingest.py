"""The dataset ingestion benchmark still runs, on tiny datasets (no timing)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

from goshen.db import make_engine, make_sessionmaker, migrate, session_scope
from goshen.db.models import User
from goshen.storage.local import LocalArtifactStore

SCRIPT = Path(__file__).parents[2] / "bench" / "dataset_ingest.py"


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("dataset_ingest", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_each_kind_ingests_to_ready_with_bounded_progress_writes(
    bench: ModuleType, tmp_path: Path
) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'goshen.db'}")
    migrate.upgrade(engine)
    factory = make_sessionmaker(engine)
    with session_scope(factory) as session:
        session.add(User(email="bench@example.com"))
    store = LocalArtifactStore(tmp_path / "store", b"k" * 32, "http://bench.test")
    images = bench.measure("images", bench.image_archive(30, 8), tmp_path, factory, store, 1)
    table = bench.measure("rows", bench.table_csv(200), tmp_path, factory, store, 1)
    engine.dispose()
    assert (images["kind"], table["kind"]) == ("images", "tabular")
    assert 2 <= images["progress_writes"] <= 30 and table["progress_writes"] == 4
