"""API key secrets: generation, hashing and constant-time verification.

A key reads `gsk_<lookup>_<secret>`. The lookup part finds the row; the whole key is checked
against a SHA-256 hash (a fast hash is right: the secret carries 190 random bits, nothing to guess).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import string
from dataclasses import dataclass

KEY_PREFIX = "gsk_"
_ALPHABET = string.ascii_letters + string.digits
_LOOKUP_LENGTH = 10
_SECRET_LENGTH = 32  # 32 base62 characters = 190 bits


@dataclass(frozen=True)
class NewKey:
    """A freshly made key: `plaintext` is shown to its owner once and never stored."""

    plaintext: str
    prefix: str
    secret_hash: str
    last4: str


def _random_text(length: int) -> str:
    return "".join(secrets.choice(_ALPHABET) for _ in range(length))


def generate_key() -> NewKey:
    prefix = KEY_PREFIX + _random_text(_LOOKUP_LENGTH)
    plaintext = f"{prefix}_{_random_text(_SECRET_LENGTH)}"
    return NewKey(plaintext, prefix, hash_key(plaintext), plaintext[-4:])


def hash_key(plaintext: str) -> str:
    return hashlib.sha256(plaintext.encode()).hexdigest()


def key_prefix(plaintext: str) -> str | None:
    """The lookup prefix of a presented key, or None when it is not shaped like a Goshen key."""
    head, sep, secret = plaintext.rpartition("_")
    lookup = head.removeprefix(KEY_PREFIX)
    if (
        not sep
        or not head.startswith(KEY_PREFIX)
        or len(lookup) != _LOOKUP_LENGTH
        or len(secret) != _SECRET_LENGTH
        or not (lookup + secret).isalnum()
        or not (lookup + secret).isascii()
    ):
        return None
    return head


def matches(plaintext: str, secret_hash: str) -> bool:
    return hmac.compare_digest(hash_key(plaintext), secret_hash)
