"""Fill `${NAME}` placeholders in a config template; a missing value is an error, not a blank."""

from __future__ import annotations

import re
from collections.abc import Mapping

PLACEHOLDER = re.compile(r"\$\{([A-Z][A-Z0-9_]*)\}")


def render(template: str, values: Mapping[str, object]) -> str:
    """Substitute every `${NAME}`; raise `KeyError` naming any placeholder without a value."""
    missing = sorted(set(PLACEHOLDER.findall(template)) - set(values))
    if missing:
        raise KeyError(f"no value for placeholders {missing}")
    return PLACEHOLDER.sub(lambda match: str(values[match.group(1)]), template)
