"""The MLflow registry over plain HTTP, bounded: the lookups made while someone waits (one REST
call each, with a timeout), the health check, and the limits of MLflow's own client in a process
that must not wait minutes for a tracking server that is down.

`goshen.registry` re-exports what callers use; this module exists so that neither passes the
length a reader takes in at once.
"""

from __future__ import annotations

import base64
import functools
import logging
import math
import os
import ssl
from urllib.parse import urlsplit, urlunsplit

import httpx

from goshen.errors import GoshenError

# How MLflow says a name, alias or version does not exist: an unknown alias (or a version that
# is not a number) is an invalid parameter to it, not a missing resource.
NOT_FOUND_CODES = frozenset({"RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"})

# MLflow's own client retries a request 7 times with exponential backoff and waits up to 120 s
# for each answer: about four minutes before a caller learns the server is down.
_MLFLOW_CLIENT_RETRIES = 1
log = logging.getLogger(__name__)


class RegistryUnavailableError(GoshenError):
    """The MLflow tracking server did not answer as expected."""

    status_code = 503
    title = "Registry unavailable"


def shown(tracking_uri: str) -> str:
    """The tracking URI as errors and logs show it: without any user or password in it."""
    parts = urlsplit(tracking_uri)
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=host))


def version_for_alias(tracking_uri: str, name: str, alias: str, timeout: float) -> str | None:
    """The version `name@alias` points at, or None when there is none; one bounded REST call.

    The API asks this while a caller waits, so it does not go through MlflowClient, whose
    retries can hold a request for minutes when the tracking server is down.
    """
    response = _rest_get(
        tracking_uri, "registered-models/alias", {"name": name, "alias": alias}, timeout
    )
    if response is None:
        return None
    try:
        return str(response.json()["model_version"]["version"])
    except (ValueError, KeyError, TypeError):
        raise RegistryUnavailableError(
            f"the MLflow registry at {shown(tracking_uri)} answered {name}@{alias} with no "
            "model version"
        ) from None


def delete_alias(tracking_uri: str, name: str, alias: str, timeout: float) -> None:
    """Remove `name@alias` (nothing when it does not exist); one bounded REST call."""
    params = {"name": name, "alias": alias}
    _rest_get(tracking_uri, "registered-models/alias", params, timeout, method="DELETE")


def _rest_get(
    tracking_uri: str,
    endpoint: str,
    params: dict[str, str],
    timeout: float,
    *,
    method: str = "GET",
) -> httpx.Response | None:
    """Call (GET by default) an MLflow REST endpoint with MLflow's own credentials; None when
    what it names does not exist."""
    # MLflow's server reads a GET's fields from the query string and any other's from its body.
    query = method == "GET"
    try:
        response = httpx.request(
            method,
            f"{tracking_uri.rstrip('/')}/api/2.0/mlflow/{endpoint}",
            params=params if query else None,
            json=None if query else params,
            headers=_mlflow_auth_headers(),
            timeout=timeout,
            verify=_tls(),
        )
    except httpx.HTTPError as exc:
        raise RegistryUnavailableError(
            f"the MLflow registry at {shown(tracking_uri)} does not answer ({type(exc).__name__})"
        ) from exc
    if response.status_code == 404 or (
        response.is_error and any(code in response.text for code in NOT_FOUND_CODES)
    ):
        return None
    if response.is_error:
        # What it said goes to the log: it can name the server's own internals.
        log.warning("MLflow answered %s to %s: %s", response.status_code, endpoint, response.text)
        raise RegistryUnavailableError(
            f"the MLflow registry at {shown(tracking_uri)} answered {response.status_code} "
            f"to {endpoint}"
        )
    return response


@functools.cache
def _tls() -> ssl.SSLContext:
    """One TLS context for every call, as httpx would build it (CA bundle, SSL_CERT_FILE). httpx
    builds one per call otherwise, loading the CA bundle each time: about 30 ms of CPU, taken
    from the API's event loop every time the catalog follows the registry."""
    return httpx.create_ssl_context()


def _mlflow_auth_headers() -> dict[str, str]:
    """The credentials MLflow's own client sends (MLFLOW_TRACKING_TOKEN, or username and
    password), so these calls work against an MLflow server with authentication."""
    token = os.environ.get("MLFLOW_TRACKING_TOKEN")
    if token:
        return {"Authorization": f"Bearer {token}"}
    username = os.environ.get("MLFLOW_TRACKING_USERNAME")
    password = os.environ.get("MLFLOW_TRACKING_PASSWORD")
    if username and password:
        pair = base64.b64encode(f"{username}:{password}".encode()).decode()
        return {"Authorization": f"Basic {pair}"}
    return {}


def ping(tracking_uri: str, timeout: float) -> None:
    """Check that the MLflow registry answers a query within `timeout` seconds; raise
    RegistryUnavailableError naming its address otherwise. A query, not MLflow's /health, which
    answers while the server's own database is gone."""
    _rest_get(tracking_uri, "registered-models/search", {"max_results": "1"}, timeout)


def registered_model_exists(tracking_uri: str, name: str, timeout: float) -> bool:
    """Whether the registry has a registered model `name`; one bounded REST call."""
    return _rest_get(tracking_uri, "registered-models/get", {"name": name}, timeout) is not None


def version_exists(tracking_uri: str, name: str, version: str, timeout: float) -> bool:
    """Whether `name` has `version` in the registry; one bounded REST call."""
    params = {"name": name, "version": version}
    return _rest_get(tracking_uri, "model-versions/get", params, timeout) is not None


def bound_mlflow_client(timeout: float) -> None:
    """Bound MLflow's own HTTP client in this process (downloads, MlflowClient): a request waits
    at most `timeout` seconds for each answer and is retried once, at once. Values already set
    in the environment (MLFLOW_HTTP_REQUEST_*) win. Process-wide: call it only in a process
    whose every MLflow call should give up that soon, such as a worker's."""
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", str(max(1, math.ceil(timeout))))
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", str(_MLFLOW_CLIENT_RETRIES))
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "0")
