"""How one answer of a candidate compares with the primary's answer to the same request: what
shadow traffic measures, per kind (each kind's `compare`), framework-free."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


class AnswersNotComparable(ValueError):
    """The two answers do not have the same shape (another number of rows, texts or masks)."""


@dataclass(frozen=True)
class Comparison:
    """One pair of answers compared: of its `items` (rows, texts or masks), how many got the
    same top label (or token); for crystal the largest difference of any score; for fill-mask
    the mean share of top-k tokens both answers hold."""

    items: int
    agreeing: int
    largest_score_difference: float | None = None
    top_k_overlap: float | None = None


# A kind's comparison: (primary's answer, candidate's answer), each the parsed JSON of the
# route's answer, -> Comparison; raises AnswersNotComparable.
Compare = Callable[[Any, Any], Comparison]
