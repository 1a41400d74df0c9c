"""The ports `goshen up` will listen on, checked free before any service starts."""

from __future__ import annotations

import errno
import socket
from collections.abc import Sequence

from goshen.config import ENV_PREFIX
from goshen_launcher.services import Service
from goshen_launcher.supervisor import PlatformError


def check_ports_free(host: str, services: Sequence[Service]) -> None:
    for service in services:
        if service.port is None:
            continue
        setting = service.port_setting or f"{ENV_PREFIX}PORT"
        try:
            _bind_once(host, service.port)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise PlatformError(
                    f"port {service.port} is already in use ({setting}); "
                    f"set {setting} to a free port"
                ) from None
            if exc.errno == errno.EACCES:
                raise PlatformError(
                    f"port {service.port} needs privileges ({setting}); "
                    f"set {setting} to a free port above 1023"
                ) from None
            raise PlatformError(
                f"cannot listen on {host!r}: {exc.strerror or exc} ({ENV_PREFIX}HOST); "
                f"set {ENV_PREFIX}HOST to an address of this machine"
            ) from None


def _bind_once(host: str, port: int) -> None:
    """Bind and release `host:port` as the services will, so a busy port fails before start."""
    family, kind, proto, _, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    with socket.socket(family, kind, proto) as sock:
        # As servers do: a port held only by connections in TIME_WAIT is free to listen on.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
