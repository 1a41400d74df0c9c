"""A real S3-compatible server on loopback (moto's server mode) for the storage tests."""

from __future__ import annotations

import hmac
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qsl

import pytest
from botocore.auth import S3SigV4QueryAuth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from moto.server import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
from werkzeug.serving import make_server

Environ = dict[str, Any]
_ACCESS_KEY_ID = "goshen-test"
_SECRET_ACCESS_KEY = "goshen-test-secret"


@dataclass(frozen=True)
class S3Server:
    """Where the loopback server listens, and the dummy credentials the tests sign with."""

    endpoint_url: str
    region: str = "us-east-1"
    access_key_id: str = _ACCESS_KEY_ID
    secret_access_key: str = _SECRET_ACCESS_KEY


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    """moto's S3 on 127.0.0.1 at a free port, checking presigned URLs the way S3 does."""
    credentials = Credentials(_ACCESS_KEY_ID, _SECRET_ACCESS_KEY)
    app = _checking_presigned_urls(DomainDispatcherApplication(create_backend_app), credentials)
    # ThreadedMotoServer's own setup, with the presigned-URL check wrapped around its app.
    server = make_server("127.0.0.1", 0, app, threaded=True, request_handler=MotoRequestHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield S3Server(f"http://127.0.0.1:{server.server_port}")
    server.shutdown()
    thread.join()


def _checking_presigned_urls(app: Any, credentials: Credentials) -> Any:
    """Answer 403 to a presigned URL that is expired or badly signed.

    moto serves presigned URLs without checking them; AWS, MinIO and R2 check both.
    """

    def guarded(environ: Environ, start_response: Any) -> Iterable[bytes]:
        problem = _presigned_url_problem(environ, credentials)
        if problem is None:
            return app(environ, start_response)
        start_response("403 Forbidden", [("Content-Type", "application/xml")])
        return [f"<Error><Code>AccessDenied</Code><Message>{problem}</Message></Error>".encode()]

    return guarded


def _presigned_url_problem(environ: Environ, credentials: Credentials) -> str | None:
    path, _, query = environ["RAW_URI"].partition("?")
    params = dict(parse_qsl(query))
    if "X-Amz-Signature" not in params:
        return None
    signed_at = datetime.strptime(params["X-Amz-Date"], "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
    if datetime.now(UTC) > signed_at + timedelta(seconds=int(params["X-Amz-Expires"])):
        return "Request has expired"
    expected = _sigv4_query_signature(environ, path, query, params, credentials)
    if not hmac.compare_digest(expected, params["X-Amz-Signature"]):
        return "The request signature we calculated does not match the signature you provided"
    return None


def _sigv4_query_signature(
    environ: Environ, path: str, query: str, params: dict[str, str], credentials: Credentials
) -> str:
    """Recompute the SigV4 query signature with botocore's own signer."""
    unsigned = "&".join(p for p in query.split("&") if not p.startswith("X-Amz-Signature="))
    host = environ["HTTP_HOST"]
    request = AWSRequest(
        method=environ["REQUEST_METHOD"],
        url=f"http://{host}{path}?{unsigned}",
        headers={"host": host},
    )
    request.context["timestamp"] = params["X-Amz-Date"]
    region = params["X-Amz-Credential"].split("/")[2]
    auth = S3SigV4QueryAuth(credentials, "s3", region, expires=int(params["X-Amz-Expires"]))
    string_to_sign = auth.string_to_sign(request, auth.canonical_request(request))
    return auth.signature(string_to_sign, request)
