"""The one percentile every latency figure of the load tools is computed with, so a p99 in one
report means what it means in the others."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np


def percentile(values: Iterable[float], q: float) -> float | None:
    """The `q`th percentile (0-100) with linear interpolation between the closest ranks, as
    `np.percentile` computes it; None without any value, so an empty window reports no figure
    rather than failing."""
    array = np.fromiter(values, dtype=float)
    return float(np.percentile(array, q)) if array.size else None
