"""Dependencies a worker needs that can be down, and the worker's health while one is.

An attempt that fails because the MLflow registry or the artifact store does not answer is an
outage, not the job's fault: its jobs go back to the queue without spending an attempt
(serving.jobs.transitions.retry_after_outage), and the worker's heartbeat reports it `unhealthy`,
naming the dependency, until that dependency answers its check again. The worker keeps claiming
meanwhile: jobs of models it has loaded need no registry, and the others fail fast and wait
out the outage in the queue, with backoff.

The database is not tracked here: while it is down the worker can write neither a job nor its
own row. Its heartbeat goes stale, its leases lapse, and recovery requeues the jobs.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

from goshen import registry
from goshen.config import Settings
from goshen.errors import UnavailableError
from goshen.registry import RegistryUnavailableError
from goshen.storage import ArtifactStore

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Outage:
    """A dependency that does not answer: `dependency` names it; `reason` (for the workers
    table) says where and why, `detail` adds what the failing call raised (for the log and the
    job's attempt errors); `check` raises for as long as it is still down."""

    dependency: str
    reason: str
    detail: str
    check: Callable[[], None]

    @property
    def error(self) -> str:
        """What the job's owner sees: the kind of dependency, never its address."""
        return f"{self.dependency} does not answer"


def registry_outage(failure: BaseException, settings: Settings) -> Outage | None:
    """The registry outage `failure` is, or None when it is something else."""
    if not isinstance(failure, RegistryUnavailableError):
        return None
    cause = failure.__cause__
    detail = f"{failure}: {cause}" if cause is not None else str(failure)
    check = partial(
        registry.ping, settings.resolved_mlflow_tracking_uri, settings.dependency_timeout_seconds
    )
    return Outage("the model registry", str(failure), detail, check)


def store_outage(store: ArtifactStore, failure: Exception) -> Outage | None:
    """The store's outage, when `failure` came from it and its check fails now too; None when
    the store answers (the failure was something else)."""
    try:
        store.check()
    except UnavailableError as down:
        detail = f"{down}: {type(failure).__name__}: {failure}"
        return Outage("the artifact store", str(down), detail, store.check)
    return None


class DependencyHealth:
    """The dependencies this worker found down, each until it answers its check again.

    Checks run in a thread of their own, one pass at a time: a dependency that takes its whole
    timeout to fail its check never holds up the heartbeat, or the recovery of other workers'
    stalled jobs that runs beside it.
    """

    def __init__(self) -> None:
        self._down: dict[str, Outage] = {}
        self._reasons: dict[str, str] = {}
        self._checking = False
        self._lock = threading.Lock()

    def down(self, outage: Outage) -> None:
        with self._lock:
            known = outage.dependency in self._down
            self._down[outage.dependency] = outage
            self._reasons.setdefault(outage.dependency, outage.reason)
        if not known:
            log.warning("%s; this worker reports itself unhealthy until it answers", outage.detail)

    def unhealthy_because(self) -> str | None:
        """Why this worker is unhealthy (None when it is not), as last checked; starts checking
        again every dependency found down, in the background."""
        with self._lock:
            reasons = [self._reasons[dependency] for dependency in self._down]
            start = bool(self._down) and not self._checking
            self._checking = self._checking or start
        if start:
            threading.Thread(target=self._recheck, name="dependency-check", daemon=True).start()
        return "; ".join(reasons) or None

    def _recheck(self) -> None:
        try:
            with self._lock:
                outages = list(self._down.values())
            for outage in outages:
                try:
                    outage.check()
                except Exception as exc:  # noqa: BLE001 - whatever its check raises, it is down
                    with self._lock:
                        self._reasons[outage.dependency] = str(exc)
                    continue
                with self._lock:
                    if self._down.get(outage.dependency) is outage:
                        del self._down[outage.dependency]
                        self._reasons.pop(outage.dependency, None)
                log.info("%s answers again", outage.dependency)
        finally:
            with self._lock:
                self._checking = False
