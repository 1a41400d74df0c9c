"""The API-key cache's invalidation rules, without a server."""

from __future__ import annotations

import time
from pathlib import Path
from types import SimpleNamespace

from serving.http.principal_cache import STAMP_CHECK_SECONDS, PrincipalCache

KEY = "gsk_abcdefghij_" + "x" * 32


def principal(user_id: str = "usr_1"):  # type: ignore[no-untyped-def]
    return SimpleNamespace(user=SimpleNamespace(id=user_id))


def test_a_reopened_listen_connection_drops_the_cache() -> None:
    """Notifications sent while the LISTEN connection was down never arrive: start over."""
    session: list[int | None] = [1]
    cache = PrincipalCache(listen_session=lambda: session[0], stamp=None)
    assert cache.get(KEY) is None  # a miss, then the lookup stores what it read
    cache.put(KEY, principal(), cache.generation)
    assert cache.get(KEY) is not None
    session[0] = None  # down: nothing is served from the cache, nothing is stored
    assert cache.get(KEY) is None
    cache.put(KEY, principal(), cache.generation)
    session[0] = 2  # back, on a new connection
    assert cache.get(KEY) is None
    cache.put(KEY, principal(), cache.generation)
    assert cache.get(KEY) is not None


def test_a_lookup_that_began_before_a_revocation_is_not_stored() -> None:
    cache = PrincipalCache(listen_session=lambda: 1, stamp=None)
    assert cache.get(KEY) is None
    began = cache.generation
    cache.changed("usr_1")
    cache.put(KEY, principal(), began)
    assert cache.get(KEY) is None


def test_every_revocation_moves_the_stamp_and_other_processes_drop_their_caches(
    tmp_path: Path,
) -> None:
    stamp = tmp_path / "keys-changed"
    here = PrincipalCache(listen_session=None, stamp=stamp)
    elsewhere = PrincipalCache(listen_session=None, stamp=stamp)
    for _ in range(3):  # back to back: each one must be seen
        elsewhere.put(KEY, principal("usr_2"), elsewhere.generation)
        time.sleep(STAMP_CHECK_SECONDS)
        assert elsewhere.get(KEY) is not None
        here.changed("usr_1")
        time.sleep(STAMP_CHECK_SECONDS)
        assert elsewhere.get(KEY) is None
