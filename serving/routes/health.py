"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse
from sqlalchemy import Engine, text
from sqlalchemy.exc import SQLAlchemyError

from serving.http.dependencies import ApiStateDep
from serving.predict.models import live_models_loaded

router = APIRouter(tags=["health"])
log = logging.getLogger(__name__)


@router.get("/healthz")
def healthz() -> dict[str, str]:
    """The process is up and serving."""
    return {"status": "ok"}


@router.get("/readyz", responses={503: {"description": "a dependency is unavailable"}})
def readyz(state: ApiStateDep) -> JSONResponse:
    """Ready for traffic: every dependency answers and every public live ONNX model is loaded."""
    checks = {"database": _check_database(state.engine)}
    if checks["database"]["ok"]:
        checks["models"] = live_models_loaded(state.read_sessions, state.predict_models)
    ready = all(check["ok"] for check in checks.values())
    return JSONResponse(
        {"status": "ok" if ready else "unavailable", "checks": checks},
        status_code=200 if ready else 503,
    )


def _check_database(engine: Engine) -> dict[str, Any]:
    try:
        with engine.connect() as connection:
            connection.execute(text("SELECT 1"))
    except SQLAlchemyError as exc:
        # The full error can name hosts and users; it goes to the log, not to anonymous callers.
        log.warning("readiness: database check failed: %s", exc)
        return {"ok": False, "error": f"database unreachable ({exc.__class__.__name__})"}
    return {"ok": True, "error": None}


@router.get("/metrics", include_in_schema=False)
def metrics(state: ApiStateDep) -> Response:
    return state.metrics.render()
