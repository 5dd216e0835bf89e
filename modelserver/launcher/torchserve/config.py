"""TorchServe's runtime config: the committed config.properties with this instance's addresses
and paths, and the log4j2 config it logs with."""

from __future__ import annotations

import re

from modelserver.launcher.settings import LaunchSettings
from modelserver.project import PROJECT_ROOT

CONFIG_TEMPLATE = PROJECT_ROOT / "config.properties"
# TorchServe's default logging writes every request three times; ours keeps the hot path quiet.
LOG_CONFIG = PROJECT_ROOT / "log4j2.xml"


def read_properties(text: str) -> dict[str, str]:
    """Parse Java-style `key=value` lines, skipping comments and blanks."""
    properties = {}
    for raw_line in text.splitlines():
        line = raw_line.strip()
        if line and not line.startswith(("#", "!")) and "=" in line:
            key, value = line.split("=", 1)
            properties[key.strip()] = value.strip()
    return properties


def runtime_properties(settings: LaunchSettings, template: str) -> dict[str, str]:
    """The committed config.properties with this instance's addresses and paths."""
    ports = settings.ports
    store = settings.model_store.resolve()
    return {
        **read_properties(template),
        "inference_address": f"http://127.0.0.1:{ports.inference}",
        "management_address": f"http://127.0.0.1:{ports.management}",
        "metrics_address": f"http://127.0.0.1:{ports.metrics}",
        "grpc_inference_address": "127.0.0.1",
        "grpc_management_address": "127.0.0.1",
        "grpc_inference_port": str(ports.grpc_inference),
        "grpc_management_port": str(ports.grpc_management),
        "model_store": str(store),
        "workflow_store": str(store),
        "allowed_urls": f"file://{re.escape(str(store))}/.*",
        **({"token_expiration_min": f"{settings.key_lifetime_min:g}"} if settings.key_lifetime_min else {}),
    }
