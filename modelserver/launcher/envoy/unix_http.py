"""HTTP over a unix socket: how the launcher reaches Envoy's admin interface."""

from __future__ import annotations

import http.client
import socket
from pathlib import Path


class UnixHTTPConnection(http.client.HTTPConnection):
    """An `HTTPConnection` whose transport is a unix stream socket."""

    def __init__(self, socket_path: Path, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._socket_path = str(socket_path)

    def connect(self) -> None:
        """Open the unix socket instead of a TCP connection."""
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(self._socket_path)
        self.sock = sock


def unix_request(socket_path: Path, method: str, path: str, timeout_s: float = 2.0) -> tuple[int, str]:
    """Send one request; returns (status, body text). Raises `OSError` if nobody listens."""
    connection = UnixHTTPConnection(socket_path, timeout_s)
    try:
        connection.request(method, path)
        response = connection.getresponse()
        return response.status, response.read().decode("utf-8", "replace")
    finally:
        connection.close()
