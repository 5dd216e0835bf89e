"""`python -m modelserver.launcher`: what `make run` and the container run.

The public port is `PORT` (default 3000) or `--port`; every other port is loopback-only.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from pathlib import Path

from modelserver.catalogue import environment
from modelserver.errors import ConfigError
from modelserver.launcher.settings import LaunchSettings, Ports
from modelserver.launcher.supervisor import Supervisor

# Every internal (loopback) port gets a --NAME-port option.
PORT_OPTIONS = tuple(name for name in Ports().model_dump() if name != "public")


def settings_from_command_line(argv: list[str] | None, environ: dict[str, str]) -> LaunchSettings:
    """Command line and `PORT` -> typed settings (the only place the launcher reads them); every
    default is `LaunchSettings`'s own."""
    defaults = LaunchSettings()
    parser = argparse.ArgumentParser(prog="python -m modelserver.launcher", description=__doc__)
    parser.add_argument("--port", type=int, default=int(environ.get("PORT", defaults.ports.public)))
    for name in PORT_OPTIONS:
        parser.add_argument(
            f"--{name.replace('_', '-')}-port", dest=name, type=int, default=getattr(defaults.ports, name)
        )
    parser.add_argument("--listen-address", default=defaults.listen_address)
    parser.add_argument("--catalogue", type=Path, default=defaults.catalogue)
    parser.add_argument("--model-store", type=Path, default=defaults.model_store)
    parser.add_argument("--runtime-dir", type=Path, default=defaults.runtime_dir)
    parser.add_argument("--models", nargs="*", default=list(defaults.models), help="serve only these models")
    parser.add_argument("--no-build", action="store_true", help="use the archives as they are")
    parser.add_argument("--startup-timeout", type=float, default=defaults.startup_timeout_s)
    parser.add_argument(
        "--unready-delay",
        type=float,
        default=defaults.unready_delay_s,
        help="seconds of 503 health before draining on a stop",
    )
    parser.add_argument("--drain-timeout", type=float, default=defaults.drain_timeout_s)
    parser.add_argument(
        "--max-connections",
        type=int,
        default=defaults.max_connections,
        help="client connections Envoy holds at once",
    )
    parser.add_argument(
        "--envoy-workers", type=int, default=defaults.envoy_workers, help="Envoy's worker threads"
    )
    args = parser.parse_args(argv)
    ports = Ports(public=args.port, **{name: getattr(args, name) for name in PORT_OPTIONS})
    return LaunchSettings(
        ports=ports,
        listen_address=args.listen_address,
        catalogue=args.catalogue,
        models=tuple(args.models),
        model_store=args.model_store,
        runtime_dir=args.runtime_dir,
        build=not args.no_build,
        startup_timeout_s=args.startup_timeout,
        unready_delay_s=args.unready_delay,
        drain_timeout_s=args.drain_timeout,
        max_connections=args.max_connections,
        envoy_workers=args.envoy_workers,
    )


def main(argv: list[str] | None = None) -> int:
    """Run the stack until SIGINT/SIGTERM; the exit code says whether it ran cleanly."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    environ = environment()
    settings = settings_from_command_line(argv, environ)
    try:
        supervisor = Supervisor(settings, environ)
        signal.signal(signal.SIGTERM, supervisor.request_stop)
        signal.signal(signal.SIGINT, supervisor.request_stop)
        return supervisor.run()
    except ConfigError as error:
        logging.getLogger("modelserver.launcher").error("%s", error)
        return 2


if __name__ == "__main__":
    sys.exit(main())
