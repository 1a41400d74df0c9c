"""/v1/files: local artifacts downloaded by signed, expiring URL."""

from __future__ import annotations

import hmac
import time
from urllib.parse import parse_qs, urlsplit

from fastapi.testclient import TestClient

from goshen.storage import artifact_key


def _relative(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.path}?{parts.query}"


def test_signed_url_downloads_the_artifact(client: TestClient) -> None:
    store = client.app.state.api.store
    key = artifact_key("outputs", "usr_1", "job_1", "digit 7.png")
    payload = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 64
    store.put(key, payload)
    response = client.get(_relative(store.signed_url(key)))
    assert response.status_code == 200
    assert response.content == payload
    assert response.headers["content-type"] == "image/png"
    assert response.headers["x-content-type-options"] == "nosniff"
    assert "digit%207.png" in response.headers["content-disposition"]


def test_tampered_or_expired_links_are_refused(client: TestClient) -> None:
    store = client.app.state.api.store
    store.put("outputs/usr_1/job_1/a.png", b"a")
    store.put("outputs/usr_2/job_2/b.png", b"b")
    url = store.signed_url("outputs/usr_1/job_1/a.png")
    query = parse_qs(urlsplit(url).query)
    expires, signature = query["expires"][0], query["signature"][0]
    other = f"/v1/files/outputs/usr_2/job_2/b.png?expires={expires}&signature={signature}"
    assert client.get(other).status_code == 403
    later = _relative(url).replace(
        f"expires={query['expires'][0]}", f"expires={int(query['expires'][0]) + 60}"
    )
    assert client.get(later).status_code == 403
    past = int(time.time()) - 10
    signing_key = client.app.state.api.settings.signing_key
    signature = hmac.new(signing_key, f"outputs/usr_1/job_1/a.png\n{past}".encode(), "sha256")
    expired = (
        f"/v1/files/outputs/usr_1/job_1/a.png?expires={past}&signature={signature.hexdigest()}"
    )
    response = client.get(expired)
    assert response.status_code == 403 and "expired" in response.json()["detail"]
    assert client.get("/v1/files/outputs/usr_1/job_1/a.png").status_code == 422


def test_signed_link_to_a_missing_file_is_404(client: TestClient) -> None:
    url = client.app.state.api.store.signed_url("outputs/usr_1/job_1/gone.png")
    assert client.get(_relative(url)).status_code == 404
