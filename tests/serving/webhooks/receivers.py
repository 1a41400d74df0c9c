"""Webhook receivers: HTTP servers on loopback addresses that record each POST and answer as told,
and a TLS context whose certificate names one host."""

from __future__ import annotations

import contextlib
import socket
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any


@dataclass
class Received:
    headers: dict[str, str]
    body: bytes


Answer = Callable[[BaseHTTPRequestHandler], None]


def status(code: int, **headers: str) -> Answer:
    def answer(handler: BaseHTTPRequestHandler) -> None:
        handler.send_response(code)
        for name, value in {"Content-Length": "0", **headers}.items():
            handler.send_header(name.replace("_", "-"), value)
        handler.end_headers()

    return answer


@dataclass
class Receiver:
    """An HTTP server on a loopback address: records each POST and answers as told (default 204)."""

    server: ThreadingHTTPServer
    received: list[Received] = field(default_factory=list)
    answers: list[Answer] = field(default_factory=list)
    default: Answer = field(default_factory=lambda: status(204))

    @property
    def port(self) -> int:
        return self.server.server_address[1]

    @property
    def url(self) -> str:
        return f"http://{self.server.server_address[0]}:{self.port}/hook"

    def answer(self, handler: BaseHTTPRequestHandler) -> None:
        body = handler.rfile.read(int(handler.headers["Content-Length"]))
        self.received.append(Received(dict(handler.headers.items()), body))
        (self.answers.pop(0) if self.answers else self.default)(handler)


class ReceiverHandler(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        self.server.receiver.answer(self)  # type: ignore[attr-defined]  # set by the receiver fixture

    def log_message(self, format: str, *args: object) -> None:
        """Keep the test output quiet."""


def tls_receiver_context(tmp_path: Path, certified_name: str) -> tuple[str, ssl.SSLContext]:
    """A test CA (the path of its PEM) and a server context whose certificate names one host."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    def certificate(name: str, key: Any, issuer: str, issuer_key: Any, ca: bool) -> Any:
        now = datetime.now(UTC)
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(minutes=5))
            .not_valid_after(now + timedelta(hours=1))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        )
        if not ca:
            san = x509.SubjectAlternativeName([x509.DNSName(name)])
            builder = builder.add_extension(san, critical=False)
        return builder.sign(issuer_key, hashes.SHA256())

    ca_key, leaf_key = (
        ec.generate_private_key(ec.SECP256R1()),
        ec.generate_private_key(ec.SECP256R1()),
    )
    ca = certificate("Goshen test CA", ca_key, "Goshen test CA", ca_key, ca=True)
    leaf = certificate(certified_name, leaf_key, "Goshen test CA", ca_key, ca=False)
    pem = serialization.Encoding.PEM
    (tmp_path / "ca.pem").write_bytes(ca.public_bytes(pem))
    (tmp_path / "leaf.pem").write_bytes(leaf.public_bytes(pem))
    (tmp_path / "leaf.key").write_bytes(
        leaf_key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(tmp_path / "leaf.pem", tmp_path / "leaf.key")
    return str(tmp_path / "ca.pem"), context


class DripReceiver:
    """A raw-socket receiver that never finishes its answer: after reading a request it sends
    `HTTP/1.1 200 OK`, `Content-Length: 0` and the start of an `X-Drip` header, then one more
    byte of that header every `interval` seconds, up to `drops` bytes — every read of a
    per-read timeout longer than `interval` gets something. `hung_up` is set (with the seconds
    since the request arrived in `held_seconds`) once the client closes the connection."""

    HEAD = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nX-Drip: "

    def __init__(self, interval: float = 1.5, drops: int = 12) -> None:
        self.interval, self.drops = interval, drops
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.requested = threading.Event()
        self.hung_up = threading.Event()
        self.held_seconds: float | None = None
        threading.Thread(target=self._serve, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.listener.getsockname()[1]}/hook"

    def close(self) -> None:
        self.listener.close()

    def _serve(self) -> None:
        with contextlib.suppress(OSError):  # closed by close()
            connection, _ = self.listener.accept()
            with connection:
                self._drip(connection)

    def _drip(self, connection: socket.socket) -> None:
        request = b""
        while b"\r\n\r\n" not in request:
            request += connection.recv(65536)
        self.requested.set()
        started = time.monotonic()
        connection.sendall(self.HEAD)
        connection.settimeout(self.interval)
        for _ in range(self.drops):
            try:
                if connection.recv(65536) == b"":  # rest of the body, then the client's close
                    break
                continue
            except TimeoutError:
                pass  # a quiet interval: drip one more byte
            except OSError:
                break  # reset by the client
            try:
                connection.sendall(b"x")
            except OSError:
                break
        else:
            return  # dripped to the end; the client never hung up
        self.held_seconds = time.monotonic() - started
        self.hung_up.set()
