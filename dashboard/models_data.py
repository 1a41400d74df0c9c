"""The Models page's data: the admin catalog and an entry's versions, read through the SDK and
reused for a few seconds per key, shaped into the tables, requests and forms the page shows."""

from __future__ import annotations

from typing import Any

import streamlit as st

from dashboard import session, ui
from goshen.client import GoshenClient

KINDS = {"diffusion": "generator", "onnx": "predictor"}
PRICING_UNITS = ("image", "second", "request")
# Statuses of a job that has ended; any other one is still queued or running.
ENDED = ("succeeded", "failed", "canceled")


@st.cache_data(ttl=ui.SHORT_TTL_SECONDS, show_spinner=False)
def catalog(api_url: str, key: str) -> list[dict[str, Any]]:
    """Every catalog entry not deleted, by name (the key is only hashed, in this process)."""
    entries = _client(api_url, key).admin_list_models()
    return sorted((e for e in entries if e.get("deleted_at") is None), key=lambda e: e["name"])


@st.cache_data(ttl=ui.SHORT_TTL_SECONDS, show_spinner=False)
def versions(api_url: str, key: str, name: str) -> list[dict[str, Any]]:
    """The versions the platform recorded for the entry `name`, newest first."""
    recorded: list[dict[str, Any]] = _client(api_url, key).admin_model_versions(name)
    return recorded


def forget_reads() -> None:
    """Drop the cached catalog and versions: an entry just changed."""
    catalog.clear()
    versions.clear()


def _client(api_url: str, key: str) -> GoshenClient:
    return session.client(session.Admin(api_url, key, source="this session"))


def kind(model: dict[str, Any]) -> str:
    return KINDS.get(model["kind"], str(model["kind"]))


def is_generator(model: dict[str, Any]) -> bool:
    return bool(model["kind"] == "diffusion")


def price(pricing: dict[str, Any]) -> str:
    """`0.001 credits / image`."""
    return f"{ui.credits(pricing.get('price_micros'))} credits / {pricing.get('unit', '?')}"


def status(model: dict[str, Any]) -> str:
    """The status, with why the last deploy failed when it did."""
    error = model.get("status_error")
    return f"{model['status']} ({error})" if error else str(model["status"])


def follows(model: dict[str, Any]) -> str:
    """What a deploy resolves: a pinned version, or the alias the entry follows."""
    if model.get("pinned_version"):
        return f"pinned to v{model['pinned_version']}"
    return f"@{model['alias']}" if model.get("alias") else "—"


def _or_default(value: Any) -> str:
    return "default" if value is None else f"{value:g}"


def catalog_rows(models: list[dict[str, Any]]) -> list[dict[str, str]]:
    """One row per entry for the catalog table (every cell text, so a column has one type)."""
    return [
        {
            "name": model["name"],
            "kind": kind(model),
            "owner": model.get("owner_id") or "platform",
            "visibility": model["visibility"],
            "status": status(model),
            "live version": model.get("live_version") or "—",
            "alias": follows(model),
            "price": price(model["pricing"]),
            "max batch size": _or_default(model.get("max_batch_size")),
            "max wait ms": _or_default(model.get("max_wait_ms")),
        }
        for model in models
    ]


def version_rows(recorded: list[dict[str, Any]]) -> list[dict[str, str]]:
    """One row per recorded version: whether it is live, its metrics and checks, what made it."""
    checks = {True: "passed", False: "failed", None: "—"}
    return [
        {
            "version": row["version"],
            "live": "live" if row.get("live") else "",
            "source": row.get("source") or "—",
            "metrics": ", ".join(f"{k}={v:.4g}" for k, v in (row.get("metrics") or {}).items()),
            "checks": checks[row.get("checks_passed")],
            "training job": row.get("training_job_id") or "—",
            "dataset": row.get("dataset_id") or "—",
            "created": ui.timestamp(row.get("created_at")),
        }
        for row in recorded
    ]


def deploy_request(target: str) -> dict[str, str]:
    """A deploy's body from what was typed: digits pin that version, anything else is an alias
    to follow, nothing keeps what the entry has."""
    target = target.strip()
    if not target:
        return {}
    return {"version": target} if target.isdecimal() else {"alias": target}


def input_form_schema(model: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(object JSON Schema, example input) for the entry's Try it form. A generator publishes
    JSON Schema; a predictor publishes its ONNX signature, made here one JSON array per input."""
    schema = model.get("input_schema") or {}
    examples = [example for example in model.get("examples") or [] if isinstance(example, dict)]
    if is_generator(model):
        return schema, examples[0] if examples else {}
    example = (examples[0] if examples else schema.get("example") or {}).get("inputs") or {}
    properties = {
        spec["name"]: {
            "type": "array",
            "title": spec["name"],
            "description": tensor_description(spec),
        }
        for spec in schema.get("inputs") or []
    }
    return {"type": "object", "properties": properties, "required": list(properties)}, example


def tensor_description(spec: dict[str, Any]) -> str:
    """`float32 shaped [batch, 64], values 0 to 1` for an ONNX input."""
    shape = spec.get("shape")
    dims = (
        "any shape"
        if shape is None
        else "shaped ["
        + ", ".join(
            "batch" if axis == 0 and dim is None else ("any" if dim is None else str(dim))
            for axis, dim in enumerate(shape)
        )
        + "]"
    )
    described = f"a nested list of {spec.get('dtype')} {dims}"
    if spec.get("value_range"):
        low, high = spec["value_range"]
        described += f", values {low:g} to {high:g}"
    return described


def prediction_rows(answer: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per input row of a classifier's answer: its label and that label's probability."""
    labels = answer.get("labels") or []
    probabilities = answer.get("probabilities") or [[] for _ in labels]
    return [
        {"row": index, "label": str(label), "probability": max(row, default=None)}
        for index, (label, row) in enumerate(zip(labels, probabilities, strict=False))
    ]


def job_summary(job: dict[str, Any]) -> str:
    """`Job job_… **succeeded**, cost 0.004 credits`, in markdown."""
    cost = job.get("cost_micros")
    charged = f", cost {ui.credits(cost)} credits" if cost is not None else ""
    return f"Job `{job['id']}` **{job['status']}**{charged}"


def job_ended(job: dict[str, Any]) -> bool:
    return job["status"] in ENDED


def image_urls(job: dict[str, Any]) -> list[str]:
    """The signed links of a job's output images (none until it succeeds)."""
    return [image["url"] for image in (job.get("output") or {}).get("images") or []]
