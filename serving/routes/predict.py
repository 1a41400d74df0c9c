"""POST /v1/models/{name}/predict: synchronous ONNX inference, dynamically batched.

The body is MLflow's tensor input format, `{"inputs": {"<input name>": <nested list>}}`, so a
client of `mlflow models serve` switches by changing the URL.
"""

from __future__ import annotations

import re
import time
from typing import Any

import orjson
from fastapi import APIRouter, Request
from fastapi.responses import Response
from pydantic import Field
from starlette.concurrency import run_in_threadpool

from goshen import catalog
from goshen.accounts import Principal
from goshen.billing.rate_limits import RouteClass
from goshen.db.models import Model, ModelKind, ModelStatus
from goshen.errors import ConflictError, InvalidInputError, NotFoundError, UnavailableError
from serving.catalog.cache import CatalogCache
from serving.http.body_limit import body_of
from serving.http.content_type import require_json
from serving.http.dependencies import ApiStateDep, authenticate
from serving.http.direct_routes import DirectRoute
from serving.http.openapi import problem_response
from serving.http.paths import ModelName
from serving.predict.metering import UsageRecorder
from serving.predict.models import LOAD_RETRY_SECONDS, ModelLoadError
from serving.schemas import CATALOG_NAME_PATTERN, RequestBody

router = APIRouter(prefix="/v1/models", tags=["predict"], route_class=DirectRoute)
_CATALOG_NAME = re.compile(CATALOG_NAME_PATTERN)


class PredictRequest(RequestBody):
    """The body, as the OpenAPI document shows it; the route parses it itself (it is the
    hottest path, and the ONNX signature checks every value anyway)."""

    inputs: dict[str, Any] | list[Any] = Field(
        description="tensors by input name, as nested lists (a bare list for single-input "
        "models); GET /v1/models/{name} lists each input's name, dtype and shape"
    )


def _body_inputs(raw: bytes) -> Any:
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidInputError(
            f'the body is not JSON ({exc}); send {{"inputs": {{"<input name>": [...]}}}}',
            field="body",
        ) from None
    if not isinstance(body, dict) or "inputs" not in body:
        raise InvalidInputError(
            'send {"inputs": {"<input name>": [...]}} (MLflow\'s tensor format)', field="inputs"
        )
    if len(body) > 1:
        unknown = sorted(set(body) - {"inputs"})
        raise InvalidInputError(f"unknown fields {unknown}; send only `inputs`", field=unknown[0])
    return body["inputs"]


@router.post(
    "/{name}/predict",
    openapi_extra={
        "security": [{"HTTPBearer": []}],
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": PredictRequest.model_json_schema()}},
        },
    },
    responses={
        200: {"description": '`{"outputs": {...}}`; classifiers add `labels` and `probabilities`'},
        402: problem_response(
            "the account's available credit is short of what this request may cost, or it "
            "would take this API key past its monthly spend cap",
            "InsufficientCreditProblem",
            "SpendCapProblem",
        ),
        404: {"description": "no such model, or not one this key may call"},
        409: {"description": "the model is not deployed (undeployed, failed or deploying)"},
        422: {"description": "an input is missing, unknown, or of the wrong shape or dtype"},
    },
)
async def predict(name: ModelName, request: Request, state: ApiStateDep) -> Response:
    """Run the model's live ONNX version on the inputs; each caller gets exactly its own rows.

    What the request may cost is taken from credit before the model runs (402 when short).

    Needs a key with the `predict` scope.
    """
    arrived = time.perf_counter()
    principal = await authenticate(request, state, "predict", RouteClass.predict)
    if _CATALOG_NAME.fullmatch(name) is None:  # what FastAPI's validation of the path would do
        raise NotFoundError(f"no model named {name!r}; model names match {CATALOG_NAME_PATTERN}")
    require_json(request)
    inputs = _body_inputs(await body_of(request))
    model = await _callable_model(state.catalog, name, principal.user.id)
    version = catalog.serving_version(model)
    assert version is not None, "a ready entry has a live version"
    loaded = state.predict_models.loaded(model, version)
    if loaded is None:
        try:
            loaded = await run_in_threadpool(state.predict_models.load, model, version)
        except ModelLoadError:
            # Why is for admins (/readyz, the deploy's status); callers may only try again.
            raise UnavailableError(
                f"model {name} cannot be served right now; try again shortly",
                retry_after_seconds=LOAD_RETRY_SECONDS,
            ) from None
    loaded.last_used = time.monotonic()
    feeds = loaded.onnx.check_inputs(inputs, max_rows=state.settings.predict_max_rows)
    rows = loaded.onnx.rows(feeds)
    credit = state.predict_credit
    reserved = await credit.reserve(principal, model, rows) if credit is not None else 0
    try:
        outputs, seconds = await loaded.batcher.predict(feeds, rows)
    except BaseException:
        if credit is not None:
            credit.settle(principal, reserved, 0)  # nothing ran for this caller: no charge
        raise
    cost = _meter(state.usage, model, principal, rows, seconds)
    if credit is not None:
        credit.settle(principal, reserved, cost)
    answer = Response(loaded.onnx.answer(outputs), media_type="application/json")
    label = catalog.metric_label(model.name, model.owner_id)
    state.metrics.predicted(label, time.perf_counter() - arrived)
    return answer


async def _callable_model(cache: CatalogCache, name: str, user_id: str) -> Model:
    model = None
    for candidate in catalog.candidate_names(name, user_id):
        model = await cache.lookup(candidate)
        if model is not None and catalog.is_visible(model, user_id):
            break
    if model is None or not catalog.is_visible(model, user_id):
        raise NotFoundError(f"no model named {name!r}; GET /v1/models lists the ones you can call")
    if model.kind != ModelKind.onnx:
        raise InvalidInputError(
            f"model {name} generates images; send it to POST /v1/generate", field="name"
        )
    if model.status != ModelStatus.ready or not catalog.serving_version(model):
        raise ConflictError(catalog.not_deployed(model))
    return model


def _meter(
    usage: UsageRecorder, model: Model, principal: Principal, rows: int, seconds: float
) -> int:
    """One usage event per request; a per-image price counts the rows, a per-second one this
    request's share (by rows) of the model call that computed it. What the request cost."""
    quantity, cost = catalog.price(model, images=rows, seconds=seconds)
    usage.record(
        user_id=principal.user.id,
        api_key_id=principal.key.id,
        model_id=model.id,
        job_id=None,
        kind="prediction",
        quantity=quantity,
        unit=str(model.pricing_unit),
        cost_micros=cost,
        images=None,
        seconds=seconds,
    )
    return cost
