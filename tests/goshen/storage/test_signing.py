"""Signed download links: on both backends a link opens its own object only, expires, and lives as
long as asked within range; S3's carry the content type; the local store's quote each segment and
carry an HMAC that verify_signed_url checks with their expiry."""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from urllib.parse import parse_qsl, urlsplit

import httpx
import pytest
from botocore.client import BaseClient

from goshen.errors import InvalidInputError, PermissionDeniedError
from goshen.storage import ArtifactStore, verify_signed_url
from goshen.storage.local import LocalArtifactStore
from tests.goshen.storage.harness import SECRET_KEY, TTL_SECONDS, Harness, s3_harness

# --- signed URLs ---------------------------------------------------------------------------------


def test_signed_url_downloads_the_object(harness: Harness) -> None:
    key = "outputs/job 1/ünï%20code.png"
    data = random.Random(3).randbytes(2048)
    harness.store.put(key, data)
    assert harness.download(harness.store.signed_url(key)) == (200, data)


def test_signed_url_for_one_key_does_not_open_another(harness: Harness) -> None:
    harness.store.put("u/one.txt", b"one")
    harness.store.put("u/two.txt", b"two")
    url = harness.store.signed_url("u/one.txt")
    assert harness.download(url.replace("one.txt", "two.txt"))[0] == 403


def test_signed_url_expires(harness: Harness) -> None:
    harness.store.put("short.txt", b"brief")
    # Expiry counts from a whole second, so 2 s leaves at least 1 s for the first download.
    url = harness.store.signed_url("short.txt", expires_in=2)
    assert harness.download(url) == (200, b"brief")
    time.sleep(3.1)
    assert harness.download(url)[0] == 403


def _lifetime(url: str) -> int:
    query = dict(parse_qsl(urlsplit(url).query))
    if "X-Amz-Expires" in query:
        return int(query["X-Amz-Expires"])
    return int(query["expires"]) - int(time.time())


def test_signed_url_lifetime_defaults_to_the_setting(store: ArtifactStore) -> None:
    store.put("k", b"x")
    assert _lifetime(store.signed_url("k")) in (TTL_SECONDS - 1, TTL_SECONDS)
    assert _lifetime(store.signed_url("k", expires_in=30)) in (29, 30)


@pytest.mark.parametrize("expires_in", [0, -5, 7 * 24 * 3600 + 1])
def test_signed_url_refuses_a_lifetime_out_of_range(store: ArtifactStore, expires_in: int) -> None:
    with pytest.raises(InvalidInputError, match="1 to 604800 seconds") as refused:
        store.signed_url("k", expires_in=expires_in)
    assert refused.value.field == "expires_in"


def test_s3_download_carries_the_content_type(s3_client: BaseClient) -> None:
    harness = s3_harness(s3_client)
    harness.store.put("img/sample.png", b"\x89PNG")
    harness.store.put("img/model", b"m", content_type="application/onnx")
    types = [
        httpx.get(harness.store.signed_url(key), trust_env=False).headers["content-type"]
        for key in ["img/sample.png", "img/model"]
    ]
    assert types == ["image/png", "application/onnx"]


def test_local_signed_url_quotes_each_segment(local_store: LocalArtifactStore) -> None:
    url = local_store.signed_url("outputs/a b/ü%.png")
    assert url.startswith("http://127.0.0.1:8000/v1/files/outputs/a%20b/%C3%BC%25.png?expires=")


def _signed_parts(store: LocalArtifactStore, key: str) -> tuple[int, str]:
    query = dict(parse_qsl(urlsplit(store.signed_url(key)).query))
    return int(query["expires"]), query["signature"]


def test_verify_signed_url_accepts_until_expiry(local_store: LocalArtifactStore) -> None:
    expires, signature = _signed_parts(local_store, "a/b.txt")
    verify_signed_url("a/b.txt", expires, signature, SECRET_KEY.encode(), now=expires)
    with pytest.raises(PermissionDeniedError, match="download link expired"):
        verify_signed_url("a/b.txt", expires, signature, SECRET_KEY.encode(), now=expires + 1)


def _flip_last(signature: str) -> str:
    return signature[:-1] + ("1" if signature.endswith("0") else "0")


@pytest.mark.parametrize(
    "tamper",
    [
        lambda key, expires, signature, secret: ("a/c.txt", expires, signature, secret),
        lambda key, expires, signature, secret: (key, expires + 3600, signature, secret),
        lambda key, expires, signature, secret: (key, expires, _flip_last(signature), secret),
        lambda key, expires, signature, secret: (key, expires, "é" * 64, secret),
        lambda key, expires, signature, secret: (key, expires, signature, b"another install"),
    ],
    ids=["key", "expiry", "signature", "non-ascii signature", "signing key"],
)
def test_verify_signed_url_refuses_tampering(
    local_store: LocalArtifactStore, tamper: Callable[..., tuple[str, int, str, bytes]]
) -> None:
    expires, signature = _signed_parts(local_store, "a/b.txt")
    forged = tamper("a/b.txt", expires, signature, SECRET_KEY.encode())
    with pytest.raises(PermissionDeniedError, match="download link signature is invalid"):
        verify_signed_url(*forged, now=expires - 60)
