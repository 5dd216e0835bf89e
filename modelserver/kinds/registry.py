"""The kind registry: one table from a model kind's name to its `Kind` declaration.

A catalogue entry names its `kind:`. The catalogue parses the entry's `handler_config` with the
kind's settings model, the archive builder learns whether the kind compiles its forward pass
(and the export child runs the kind's export), the OpenAPI document takes its request and
answer schemas, and the one generic handler loads its predictor.

Adding a kind: write its package `modelserver/kinds/<kind>/`, with a framework-free top level
(settings, request and answer models, the v2 codec if any, example, errors, and
`KIND = Kind(...)` naming its loader, and its export if it compiles) and a `worker` module (a
`contract.Predictor` with `parse` and `predict`, and the loader `load_<kind>_predictor(files)`);
then add its name to `KIND_PACKAGES` below, one line. This module imports no ML framework: a
kind's package top level never does, and its worker is imported by name, in the model worker only.
"""

from __future__ import annotations

import importlib

from modelserver.errors import ConfigError
from modelserver.kinds.kind import Kind

# One line per kind: its name, which is also its package under modelserver/kinds/.
KIND_PACKAGES = (
    "crystal",
    "fill_mask",
    "text_classification",
    "topics",
)


def declared_kind(name: str) -> Kind:
    """The `KIND` a kind's package declares (its framework-free top level)."""
    kind = importlib.import_module(f"{__package__}.{name}").KIND
    if not isinstance(kind, Kind):
        raise TypeError(f"modelserver.kinds.{name}.KIND is not a Kind")
    return kind


KINDS: dict[str, Kind] = {name: declared_kind(name) for name in KIND_PACKAGES}


def kind_named(name: object) -> Kind:
    """The kind called `name`, or a `ConfigError` listing the known ones."""
    if not isinstance(name, str) or name not in KINDS:
        raise ConfigError(f"unknown model kind {name!r}; known: {sorted(KINDS)}")
    return KINDS[name]
