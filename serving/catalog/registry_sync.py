"""The catalog follows the registry: entries that follow an alias but serve nothing yet start
serving the version the alias points at as soon as the registry has it.

On a fresh platform database the built-in entries start `deploying`, following `production`,
while the registry may already hold that alias (a database rebuilt beside a kept MLflow) or get
it later (`goshen train digits`). Every reconcile pass of every API process looks such aliases up
(one bounded call each) and switches each entry found to `ready` at that version, as the first
job submitted to it would; the reconciler then loads it like any live entry. What a pass could
not resolve is kept, with why, for /readyz. A registry that does not answer ends the pass, is
logged once per outage, and is asked again on the next pass.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from goshen import catalog, registry
from goshen.config import Settings
from goshen.db import session_scope
from goshen.db.models import Model
from goshen.registry import RegistryUnavailableError

log = logging.getLogger(__name__)
NOT_LOOKED_UP = "its alias has not been looked up in the MLflow registry yet"


@dataclass(frozen=True)
class AwaitedAlias:
    """An entry waiting for its alias, as a pass of the sync saw it."""

    model_id: str
    name: str
    registered_model: str
    alias: str


class RegistrySync:
    """Resolves the aliases of catalog entries that serve nothing yet; remembers why the ones it
    could not resolve still wait."""

    def __init__(self, settings: Settings) -> None:
        self.tracking_uri = settings.resolved_mlflow_tracking_uri
        self.timeout = settings.dependency_timeout_seconds
        self._waiting: dict[str, str] = {}  # model id -> why it still waits, after the last pass
        self._outage = False  # the registry did not answer the last time it was asked

    def run(self, reads: sessionmaker[Session], writes: sessionmaker[Session]) -> None:
        """One pass: look up every awaited alias, and serve what the registry has, in one
        short transaction (safe beside other replicas and admin deploys: an entry switches only
        while it still awaits its alias)."""
        with reads() as session:
            rows = session.execute(
                select(Model.id, Model.name, Model.registered_model, Model.alias).where(
                    catalog.awaiting_alias()
                )
            ).all()
        awaited = [
            AwaitedAlias(model_id, name, registered_model, alias)
            for model_id, name, registered_model, alias in rows
            if alias is not None  # always so (the filter asks for one); says so to the types
        ]
        found, waiting = self._look_up(awaited)
        if found:
            with session_scope(writes) as session:
                started = [
                    (entry, version)
                    for entry, version in found
                    if catalog.start_serving(session, entry.model_id, entry.alias, version)
                ]
            for entry, version in started:
                log.info(
                    "%s serves v%s, %s@%s", entry.name, version, entry.registered_model, entry.alias
                )
        self._waiting = waiting

    def _look_up(
        self, awaited: list[AwaitedAlias]
    ) -> tuple[list[tuple[AwaitedAlias, str]], dict[str, str]]:
        """The entries whose alias the registry has, with its version; why the others wait."""
        found: list[tuple[AwaitedAlias, str]] = []
        waiting: dict[str, str] = {}
        for number, entry in enumerate(awaited):
            try:
                version = registry.version_for_alias(
                    self.tracking_uri, entry.registered_model, entry.alias, self.timeout
                )
            except RegistryUnavailableError as exc:
                self._registry_down(exc)
                why = "the MLflow registry does not answer; its alias is looked up once it does"
                waiting.update((later.model_id, why) for later in awaited[number:])
                return found, waiting
            self._registry_answers()
            if version is None:
                waiting[entry.model_id] = (
                    f"{entry.registered_model}@{entry.alias} is not in the MLflow registry yet"
                )
            else:
                found.append((entry, version))
        return found, waiting

    def why_waiting(self, model_id: str) -> str:
        """Why an entry that awaits its alias still does, as the last pass found."""
        return self._waiting.get(model_id, NOT_LOOKED_UP)

    def _registry_down(self, exc: RegistryUnavailableError) -> None:
        if not self._outage:
            log.warning("catalog entries awaiting their alias wait for the registry: %s", exc)
        self._outage = True

    def _registry_answers(self) -> None:
        if self._outage:
            log.info("the MLflow registry answers again; awaited aliases are looked up")
        self._outage = False
