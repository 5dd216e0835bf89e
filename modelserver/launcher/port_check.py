"""Every port the stack will listen on, tried before anything starts.

A port already taken (another server, or a second launcher given its own `--runtime-dir` but
the same ports) would otherwise fail one process minutes later, after the build, in that
process's own words. Here it is one sentence naming the port and the option that moves it.
"""

from __future__ import annotations

import errno
import socket

from modelserver.errors import ConfigError
from modelserver.launcher.settings import LaunchSettings, declared_options

# Bound on the listen address (reachable from other machines); every other port is loopback.
PUBLIC_PORTS = ("public", "prometheus")


def _how_to_move(field: str) -> str:
    """The option (and variable) that sets the port called `field`."""
    for setting in declared_options():
        if setting.path == ("ports", field):
            option = setting.option
            return f"{option.flag} or {option.variable}" if option.variable else option.flag
    raise KeyError(field)


def _taken(address: str, port: int) -> bool:
    """Whether something listens on (address, port) now. SO_REUSEADDR, as the servers set it,
    so a port left in TIME_WAIT by a stopped server counts as free."""
    with socket.socket(socket.AF_INET6 if ":" in address else socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((address, port))
        except OSError as error:
            if error.errno == errno.EADDRINUSE:
                return True
            raise
    return False


def refuse_taken_ports(settings: LaunchSettings) -> None:
    """Raise a `ConfigError` naming the first port something already listens on."""
    for field, port in settings.ports.model_dump().items():
        address = settings.listen_address if field in PUBLIC_PORTS else "127.0.0.1"
        try:
            taken = _taken(address, port)
        except OSError as error:
            raise ConfigError(f"cannot listen on {address}:{port} ({_how_to_move(field)}): {error}") from None
        if taken:
            option = _how_to_move(field)
            raise ConfigError(
                f"port {port} ({option}) is already in use, by another server or another launcher;"
                f" stop it, or give this launcher another port with {option.split(' or ')[0]}"
            )
