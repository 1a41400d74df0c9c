"""`goshen worker`'s own /metrics (GOSHEN_WORKER_METRICS_PORT): the queue and run times of the
jobs it ran, its batch sizes, the memory it uses and the credit its jobs captured, each moving
when a batch runs; nothing served with the port at 0, and the port freed when it stops."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable

import httpx
import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from goshen.config import Settings
from goshen.db.models import CreditLedgerEntry, LedgerEntryKind, Model
from serving.worker.loop import run_worker
from tests.fixtures.accounts import Account
from tests.fixtures.servers import _free_port
from tests.serving.http.metrics_scrape import Samples, samples, value
from tests.serving.worker.jobs import has_ended, queue_jobs, wait_for


def scrape(port: int) -> Samples:
    deadline = time.monotonic() + 60
    while True:
        try:
            response = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5)
            return samples(response.text)
        except httpx.ConnectError:
            assert time.monotonic() < deadline, f"nothing serves metrics on port {port}"
            time.sleep(0.1)


def test_a_batch_moves_queue_and_run_times_batch_sizes_and_credits_captured(
    sessions: sessionmaker[Session],
    developer: Account,
    digits_model: Model,
    start_worker: Callable[..., threading.Event],
) -> None:
    port = _free_port()
    stop = start_worker(worker_metrics_port=port, worker_batch_wait_seconds=0.5)
    before = scrape(port)
    name = digits_model.name
    assert value(before, "goshen_job_run_seconds_count", model=name) is None
    assert value(before, "goshen_credits_captured_micros_total", source="job") == 0
    assert value(before, "goshen_worker_memory_used_bytes", device="cpu")

    ids = queue_jobs(sessions, developer, digits_model, 2, num_images=2)
    jobs = wait_for(sessions, ids, has_ended)
    assert {job.status for job in jobs} == {"succeeded"}
    with sessions() as session:
        captured = session.scalar(
            select(-func.sum(CreditLedgerEntry.amount_micros)).where(
                CreditLedgerEntry.kind == LedgerEntryKind.capture
            )
        )
    assert captured == 4 * digits_model.price_micros

    deadline = time.monotonic() + 10  # the batch's end is observed just after its commit
    while value(after := scrape(port), "goshen_job_run_seconds_count", model=name) != 2:
        assert time.monotonic() < deadline, value(after, "goshen_job_run_seconds_count", model=name)
        time.sleep(0.1)
    assert value(after, "goshen_job_queue_seconds_count", model=name) == 2
    queued = value(after, "goshen_job_queue_seconds_sum", model=name)
    assert queued is not None and queued >= 0
    ran = value(after, "goshen_job_run_seconds_sum", model=name)
    assert ran is not None and ran > 0
    batches = value(after, "goshen_worker_batch_jobs_count", model=name)
    assert batches is not None and batches >= 1
    assert value(after, "goshen_worker_batch_jobs_sum", model=name) == 2
    assert value(after, "goshen_worker_batch_images_sum", model=name) == 4
    assert value(after, "goshen_credits_captured_micros_total", source="job") == captured
    assert value(after, "goshen_credits_captured_micros_total", source="predict") == 0
    (info,) = [labels for sample, labels in after if sample == "goshen_worker_info"]
    assert dict(info)["device"] == "cpu" and dict(info)["worker"]

    stop.set()
    deadline = time.monotonic() + 30
    while True:  # the server stops with the worker
        try:
            httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=1)
        except httpx.TransportError:  # refused, or reset by a server closing
            break
        assert time.monotonic() < deadline, "the metrics server outlived its worker"
        time.sleep(0.2)


@pytest.mark.parametrize("backend", ["postgresql"])
def test_no_port_serves_nothing_and_a_taken_port_stops_the_worker_saying_so(
    sessions: sessionmaker[Session],
    developer: Account,
    digits_model: Model,
    start_worker: Callable[..., threading.Event],
    serving_settings: Settings,
) -> None:
    start_worker(worker_metrics_port=0)
    (job_id,) = queue_jobs(sessions, developer, digits_model, 1)
    wait_for(sessions, [job_id], has_ended)  # it runs jobs all the same

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        settings = Settings(
            **{**serving_settings.model_dump(), "_env_file": None, "worker_metrics_port": port}
        )
        with pytest.raises(OSError, match=f"port {port}.*GOSHEN_WORKER_METRICS_PORT"):
            run_worker(settings, threading.Event())
