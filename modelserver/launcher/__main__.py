"""`python -m modelserver.launcher`: what `make run` and the container run.

The public port is `PORT` (default 3000) or `--port`; every other port is loopback-only.
"""

from __future__ import annotations

import logging
import signal
import sys

from modelserver.errors import ConfigError
from modelserver.launcher.settings import settings_from_command_line
from modelserver.launcher.supervisor import Supervisor
from modelserver.project import environment


def main(argv: list[str] | None = None) -> int:
    """Run the stack until SIGINT/SIGTERM; the exit code says whether it ran cleanly."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    environ = environment()
    settings = settings_from_command_line(argv, environ)
    if settings.tracing is not None:
        tracing = settings.tracing
        where = (
            tracing.url if tracing.protocol == "http/protobuf" else f"{tracing.host}:{tracing.port} (gRPC)"
        )
        logging.getLogger("modelserver.launcher").info(
            "tracing: Envoy exports spans of service %s to %s, sampler %s",
            tracing.service_name,
            where,
            tracing.sampler,
        )
    try:
        supervisor = Supervisor(settings, environ)
        signal.signal(signal.SIGTERM, supervisor.request_stop)
        signal.signal(signal.SIGINT, supervisor.request_stop)
        return supervisor.run()
    except ConfigError as error:
        logging.getLogger("modelserver.launcher").error("%s", error)
        return 2
    except OSError as error:  # before serving began: a full or unwritable disk, a taken port
        logging.getLogger("modelserver.launcher").error("cannot start: %s", error)
        return 2


if __name__ == "__main__":
    sys.exit(main())
