"""Dataset ingestion: how long an upload takes from `uploaded` to `ready`, by size.

    python bench/dataset_ingest.py [--images 100 1000 5000] [--rows 10000 100000]
                                   [--image-px 28] [--repeats 3] [--out figures.json]

Each dataset is stored as POST /v1/datasets stores it (goshen.uploads.store_dataset; timed as
"upload"), then ingested the way the uploaded_dataset asset does it, on a SQLite platform
database: marked validating, lib/ingest.ingest_dataset with a report that writes each progress
object to the row in a short transaction of its own, marked ready (timed as "ingest"; the median
of --repeats). Each time is wall-clock and, as `_cpu_s`, this process's CPU time, which a busy
shared machine inflates less. Images are scikit-learn's bundled digits as grayscale PNGs of
--image-px pixels a side, one folder per label, in a zip; tables are CSVs of the digits' 64
features and their label. Last, "run start": a fresh Python process importing the Dagster code
location, which every launched run does before its first step.
"""

from __future__ import annotations

import argparse
import io
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import zipfile
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from sqlalchemy import select

from goshen.config import Settings
from goshen.db import make_engine, make_sessionmaker, migrate, session_scope
from goshen.db.models import Dataset, DatasetStatus, User
from goshen.ids import new_id
from goshen.storage import ArtifactStore
from goshen.storage.local import LocalArtifactStore
from goshen.uploads.limits import UploadLimits
from goshen.uploads.store import store_dataset
from goshen_pipelines.lib import datasets, ingest
from goshen_pipelines.lib.digits import load_digit_images


def image_archive(count: int, size: int) -> bytes:
    """`count` digit PNGs (cycling through the bundled 1,797), one folder per label."""
    images, labels = load_digit_images()
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for index in range(count):
            digit = index % len(images)
            image = Image.fromarray((images[digit] * 255).astype(np.uint8))
            png = io.BytesIO()
            image.resize((size, size), Image.Resampling.BILINEAR).save(png, format="PNG")
            archive.writestr(f"{labels[digit]}/{index}.png", png.getvalue())
    return buffer.getvalue()


def table_csv(rows: int) -> bytes:
    """`rows` rows of the digits' 64 pixel features and a label column, as CSV."""
    images, labels = load_digit_images()
    picks = np.arange(rows) % len(images)
    features = images.reshape(len(images), -1)[picks]
    header = ",".join(f"p{i}" for i in range(features.shape[1])) + ",label\n"
    body = "".join(
        ",".join(f"{value:.4f}" for value in row) + f",{labels[pick]}\n"
        for row, pick in zip(features, picks, strict=True)
    )
    return (header + body).encode()


def ingest_like_the_asset(
    factory: Any, store: ArtifactStore, dataset_id: str
) -> list[dict[str, Any]]:
    """start, ingest with progress written to the row, finish; the progress objects written."""
    written: list[dict[str, Any]] = []

    def report(progress: dict[str, Any]) -> None:
        written.append(progress)
        with session_scope(factory) as session:
            datasets.save_progress(session, dataset_id, progress)

    with session_scope(factory) as session:
        dataset = datasets.start_ingest(session, dataset_id)
        prefix, destination = dataset.storage_prefix, datasets.canonical_key(dataset)
    result = ingest.ingest_dataset(
        store, prefix, destination, image_size=datasets.CANONICAL_IMAGE_SIZE, report=report
    )
    with session_scope(factory) as session:
        datasets.finish_ingest(session, dataset_id, result)
    return written


def measure(
    name: str, data: bytes, workdir: Path, factory: Any, store: ArtifactStore, repeats: int
) -> dict[str, Any]:
    """Upload once, ingest `repeats` times; the figures of one dataset."""
    upload = workdir / "upload"
    upload.write_bytes(data)
    dataset_id = new_id("ds")
    with session_scope(factory) as session:
        user_id = session.scalars(select(User.id)).one()
    prefix = f"datasets/{user_id}/{dataset_id}"
    started, cpu = time.perf_counter(), time.process_time()
    stored = store_dataset(upload, store, prefix, UploadLimits.from_settings(Settings()))
    upload_seconds, upload_cpu = time.perf_counter() - started, time.process_time() - cpu
    with session_scope(factory) as session:
        session.add(
            Dataset(
                id=dataset_id, user_id=user_id, name=name, kind=stored.kind, storage_prefix=prefix
            )
        )
    times, cpu_times, written = [], [], []
    for _ in range(repeats):
        started, cpu = time.perf_counter(), time.process_time()
        written = ingest_like_the_asset(factory, store, dataset_id)
        times.append(time.perf_counter() - started)
        cpu_times.append(time.process_time() - cpu)
    with session_scope(factory) as session:
        assert session.get_one(Dataset, dataset_id).status == DatasetStatus.ready
    figures = {
        "dataset": name,
        "kind": stored.kind.value,
        "upload_mb": round(len(data) / 1e6, 2),
        "upload_s": round(upload_seconds, 3),
        "upload_cpu_s": round(upload_cpu, 3),
        "ingest_s": round(statistics.median(times), 3),
        "ingest_cpu_s": round(statistics.median(cpu_times), 3),
        "progress_writes": len(written),
    }
    print(json.dumps(figures), flush=True)
    return figures


def run_start_seconds() -> float:
    """A fresh interpreter importing the code location, as a launched Dagster run does."""
    started = time.perf_counter()
    subprocess.run(
        [sys.executable, "-W", "ignore", "-c", "import goshen_pipelines.definitions"], check=True
    )
    return round(time.perf_counter() - started, 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, nargs="*", default=[100, 1000, 5000])
    parser.add_argument("--rows", type=int, nargs="*", default=[10_000, 100_000])
    parser.add_argument("--image-px", type=int, default=28)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    inputs = [(f"{n} images", partial(image_archive, n, args.image_px)) for n in args.images]
    inputs += [(f"{n} rows", partial(table_csv, n)) for n in args.rows]
    with tempfile.TemporaryDirectory(prefix="goshen-bench-ingest-") as folder:
        workdir = Path(folder)
        engine = make_engine(f"sqlite:///{workdir / 'goshen.db'}")
        migrate.upgrade(engine)
        factory = make_sessionmaker(engine)
        with session_scope(factory) as session:
            session.add(User(email="bench@example.com"))
        store = LocalArtifactStore(workdir / "store", b"k" * 32, "http://bench.test")
        results = [measure(n, make(), workdir, factory, store, args.repeats) for n, make in inputs]
        engine.dispose()
    report = {
        "machine": f"{platform.machine()}, {platform.system()}, Python {platform.python_version()}",
        "image_px": args.image_px,
        "datasets": results,
        "run_start_s": run_start_seconds(),
    }
    print(json.dumps(report, indent=2))
    if args.out:
        args.out.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
