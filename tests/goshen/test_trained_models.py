"""A customer's trained model in the catalog: made with its first version, recorded per version,
and served as its job's deploy policy says."""

from __future__ import annotations

import pytest
from sqlalchemy.orm import Session, sessionmaker

from goshen import catalog, trained_models
from goshen.db import session_scope
from goshen.db.models import (
    Dataset,
    DatasetKind,
    DeployPolicy,
    ModelRuntime,
    ModelStatus,
    TrainingJob,
    Visibility,
)
from goshen.errors import ConflictError
from goshen.runtimes.inputs import labeled_schema
from tests.fixtures.accounts import Account

PRICES = trained_models.Prices(image_micros=1_000, request_micros=100)


def _job(session: Session, owner: Account, name: str = "trio") -> TrainingJob:
    dataset = Dataset(user_id=owner.user_id, name="d", kind=DatasetKind.images, storage_prefix="x")
    session.add(dataset)
    session.flush()
    job = TrainingJob(
        user_id=owner.user_id,
        dataset_id=dataset.id,
        task="diffusion",
        model_name=name,
        registered_model=catalog.owned_name(owner.user_id, name),
    )
    session.add(job)
    session.flush()
    return job


def _version(
    version: str, classes: list[str], passed: bool = True
) -> trained_models.TrainedVersion:
    schema, examples = labeled_schema(classes, 8)
    return trained_models.TrainedVersion(
        version=version,
        runtime=ModelRuntime.onnx_diffusion,
        input_schema=schema,
        examples=examples,
        metrics={"final_loss": 0.1},
        metric_name="final_loss",
        checks_passed=passed,
        mlflow_run_id=None,
        classes=classes,
        image_size=8,
    )


def _record(session: Session, job: TrainingJob, trained: trained_models.TrainedVersion):
    entry = trained_models.entry_for_job(session, job, trained.runtime, PRICES)
    trained_models.record_version(session, entry, job, trained)
    return entry


def test_a_first_version_makes_a_private_owned_entry_that_serves_it(
    sessions: sessionmaker[Session], developer: Account
) -> None:
    with session_scope(sessions) as session:
        job = _job(session, developer)
        entry = _record(session, job, _version("1", ["cat", "dog"]))
        assert entry.status == ModelStatus.deploying and entry.visibility == Visibility.private
        assert entry.owner_id == developer.user_id and entry.price_micros == 1_000
        trained_models.serve_decided(
            session,
            entry,
            policy=DeployPolicy.auto,
            version="1",
            checks_passed=True,
            production="1",
        )
        assert entry.status == ModelStatus.ready and catalog.serving_version(entry) == "1"
        assert entry.classes == ["cat", "dog"]
        assert entry.input_schema["properties"]["label"]
        assert catalog.get_visible(session, "trio", developer.user_id) is entry


def test_pin_serves_a_version_whatever_its_metric_and_none_only_records_it(
    sessions: sessionmaker[Session], developer: Account
) -> None:
    with session_scope(sessions) as session:
        job = _job(session, developer)
        entry = _record(session, job, _version("1", ["a", "b"]))
        outcome = trained_models.serve_decided(
            session,
            entry,
            policy=DeployPolicy.none,
            version="1",
            checks_passed=True,
            production=None,
        )
        assert entry.status == ModelStatus.disabled and "deploy it" in outcome
        entry = _record(session, _job(session, developer), _version("2", ["a", "b", "c"]))
        trained_models.serve_decided(
            session,
            entry,
            policy=DeployPolicy.pin,
            version="2",
            checks_passed=True,
            production=None,
        )
        assert entry.pinned_version == "2" and entry.status == ModelStatus.ready
        assert entry.classes == ["a", "b", "c"]
        # A version whose checks failed is never pinned.
        entry = _record(session, _job(session, developer), _version("3", ["a"], passed=False))
        trained_models.serve_decided(
            session,
            entry,
            policy=DeployPolicy.pin,
            version="3",
            checks_passed=False,
            production=None,
        )
        assert catalog.serving_version(entry) == "2"


def test_a_name_keeps_its_kind(sessions: sessionmaker[Session], developer: Account) -> None:
    with session_scope(sessions) as session:
        job = _job(session, developer)
        _record(session, job, _version("1", ["a"]))
        with pytest.raises(ConflictError, match="another name"):
            trained_models.entry_for_job(session, job, ModelRuntime.onnx, PRICES)


def test_an_undeployed_model_stays_undeployed_when_a_better_version_arrives(
    sessions: sessionmaker[Session], developer: Account
) -> None:
    with session_scope(sessions) as session:
        entry = _record(session, _job(session, developer), _version("1", ["a"]))
        trained_models.serve_decided(
            session,
            entry,
            policy=DeployPolicy.auto,
            version="1",
            checks_passed=True,
            production="1",
        )
        entry.status = ModelStatus.disabled  # its owner undeployed it
        entry = _record(session, _job(session, developer), _version("2", ["a", "b"]))
        outcome = trained_models.serve_decided(
            session,
            entry,
            policy=DeployPolicy.auto,
            version="2",
            checks_passed=True,
            production="2",
        )
        assert entry.status == ModelStatus.disabled and "undeployed" in outcome
        assert entry.live_version == "2"  # what a deploy would serve
