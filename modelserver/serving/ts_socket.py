"""Fewer system calls per request in TorchServe's Python worker: a read-ahead buffer.

TorchServe 0.12's worker reads every field of a request frame (id, each header name and value,
each input) with its own `recv()`: about 60 system calls per small request. On these virtual
machines a system call costs microseconds, so at 3,000 requests/s the worker spent more time
in `recv` than in the model. `install_read_ahead` replaces the one function through which the
worker reads its socket with one that reads up to 64 KiB at a time and serves the fields from
memory. Same bytes, same order, same end-of-connection behaviour; only for the TorchServe
versions it was checked against (a test compares parses with and without it).
"""

from __future__ import annotations

import logging
import socket
import sys
from importlib import import_module, metadata

log = logging.getLogger(__name__)

CHECKED_VERSIONS = frozenset({"0.12.0"})
CHUNK = 65536


class ReadAhead:
    """`_retrieve_buffer(conn, length)` with a buffer per connection."""

    def __init__(self) -> None:
        self._conn: socket.socket | None = None
        self._pending = bytearray()

    def read(self, conn: socket.socket, length: int) -> bytearray:
        """Exactly `length` bytes from `conn`; the worker exits when the frontend hangs up."""
        if conn is not self._conn:
            self._conn, self._pending = conn, bytearray()
        pending = self._pending
        while len(pending) < length:
            chunk = conn.recv(max(CHUNK, length - len(pending)))
            if not chunk:
                log.info("Frontend disconnected.")
                sys.exit(0)
            pending += chunk
        data = pending[:length]
        del pending[:length]
        return data


def install_read_ahead() -> bool:
    """Patch TorchServe's worker socket reader, once per process; False when not applicable."""
    try:
        protocol = import_module("ts.protocol.otf_message_handler")
        version = metadata.version("torchserve")
    except (ImportError, metadata.PackageNotFoundError):
        return False
    current = getattr(protocol, "_retrieve_buffer", None)
    if isinstance(getattr(current, "__self__", None), ReadAhead):
        return True
    if version not in CHECKED_VERSIONS or current is None:
        log.info("TorchServe %s: socket read-ahead not installed (checked: %s)", version, CHECKED_VERSIONS)
        return False
    protocol._retrieve_buffer = ReadAhead().read  # pylint: disable=protected-access
    return True
