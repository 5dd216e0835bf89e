"""docs/operations.md's limits table states the figures Envoy is configured with: each row is
checked against the constant or setting it names, so a changed limit fails here until the
table says so."""

from __future__ import annotations

import pytest

from modelserver.kinds.text import TextModelSettings
from modelserver.launcher.envoy import config
from modelserver.launcher.envoy.routes import BODY_LIMIT_BYTES
from modelserver.launcher.settings import LaunchSettings
from modelserver.project import PROJECT_ROOT


def rows() -> dict[str, str]:
    """The limits table: each row's first cell -> the rest of the row."""
    text = (PROJECT_ROOT / "docs" / "operations.md").read_text(encoding="utf-8")
    section = text.split("## Limits, overload and faults", 1)[1]
    table = next(block for block in section.split("\n\n") if block.startswith("| limit |"))
    found = {}
    for line in table.splitlines()[2:]:
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        found[cells[0]] = " | ".join(cells[1:])
    return found


@pytest.mark.parametrize(
    ("row", "figures"),
    [
        (
            "client connections to Envoy's public port",
            [f"{LaunchSettings().max_connections:,}", f"{config.OPERATIONS_CONNECTIONS} connections"],
        ),
        ("a connection that sends nothing", [f"{config.FIRST_BYTES_TIMEOUT_S} s"]),
        (
            "an idle keep-alive connection",
            [
                f"{config.DOWNSTREAM_IDLE_S} s",
                f"{config.IDLE_UNDER_PRESSURE_S} s at {config.PRESSURE_SATURATES_AT:.0%}",
            ],
        ),
        (
            "a request still arriving (headers a line at a time, a body that stalls)",
            [
                f"{config.STREAM_IDLE_TIMEOUT_S} s",
                f"{config.SLOW_SENDER_UNDER_PRESSURE_S} s at {config.PRESSURE_SATURATES_AT:.0%}",
            ],
        ),
        (
            "Envoy's heap",
            [
                f"{config.HEAP_LIMIT_BYTES >> 20} MiB",
                f"from {config.RESET_STREAMS_FROM:.0%}",
                f"from {config.SHRINK_HEAP_AT:.0%}",
                f"from {config.REFUSE_REQUESTS_AT:.0%}",
            ],
        ),
        (
            "request body",
            [f"{TextModelSettings().max_body_bytes():,} bytes", f"{BODY_LIMIT_BYTES >> 20} MiB"],
        ),
        ("request headers", [f"{config.MAX_REQUEST_HEADERS_KB} KiB"]),
        (
            "a slow or stalled client",
            [
                f"headers within {config.REQUEST_HEADERS_TIMEOUT_S} s",
                f"whole request within {config.REQUEST_TIMEOUT_S} s",
            ],
        ),
        ("HTTP versions", [f"{config.H2_MAX_CONCURRENT_STREAMS} concurrent streams"]),
    ],
)
def test_the_limits_table_states_the_configured_figures(row: str, figures: list[str]) -> None:
    table = rows()
    assert row in table, sorted(table)
    for figure in figures:
        assert figure in table[row], (row, figure, table[row])
