"""Fixtures of the webhook delivery tests: loopback receivers and settings that may reach them."""

from __future__ import annotations

import ssl
import threading
from collections.abc import Callable, Iterator
from http.server import ThreadingHTTPServer

import pytest

from goshen.config import Settings
from tests.serving.webhooks.factories import with_settings
from tests.serving.webhooks.receivers import Receiver, ReceiverHandler


@pytest.fixture
def make_receiver() -> Iterator[Callable[..., Receiver]]:
    started: list[Receiver] = []

    def make(host: str = "127.0.0.1", port: int = 0, tls: ssl.SSLContext | None = None) -> Receiver:
        server = ThreadingHTTPServer((host, port), ReceiverHandler)
        if tls is not None:
            server.socket = tls.wrap_socket(server.socket, server_side=True)
        receiver = Receiver(server)
        server.receiver = receiver  # type: ignore[attr-defined]  # set on the server for its handler
        threading.Thread(target=server.serve_forever, daemon=True).start()
        started.append(receiver)
        return receiver

    yield make
    for receiver in started:
        receiver.server.shutdown()
        receiver.server.server_close()


@pytest.fixture
def receiver(make_receiver: Callable[..., Receiver]) -> Receiver:
    return make_receiver()


@pytest.fixture
def hook_settings(settings: Settings) -> Settings:
    """Settings that let deliveries reach loopback receivers, with a short timeout."""
    return with_settings(settings, webhook_allow_loopback=True, webhook_timeout_seconds=1.0)
