"""Signed download links of the local store: their HMAC signature, checked with their expiry."""

from __future__ import annotations

import hashlib
import hmac
import time

from goshen.errors import PermissionDeniedError


def download_signature(key: str, expires: int, signing_key: bytes) -> str:
    """The HMAC-SHA256 of a local download link's key and expiry."""
    # Keys never contain "\n" (control characters are refused), so the message is unambiguous.
    message = f"{key}\n{expires}".encode()
    return hmac.new(signing_key, message, hashlib.sha256).hexdigest()


def verify_signed_url(
    key: str, expires: int, signature: str, signing_key: bytes, now: float | None = None
) -> None:
    """Check a local download link's signature and expiry, raising PermissionDeniedError."""
    expected = download_signature(key, expires, signing_key)
    if not hmac.compare_digest(expected.encode(), signature.encode()):
        raise PermissionDeniedError("download link signature is invalid")
    if (time.time() if now is None else now) > expires:
        raise PermissionDeniedError("download link expired")
