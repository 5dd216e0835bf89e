"""Whether a candidate should lose its traffic: sliding windows of each version's recent answers
(and of the shadow comparisons) judged against a `RollbackPolicy`. Pure: the launcher feeds the
windows from Envoy's access log and the shadow comparer, and acts on the reason."""

from __future__ import annotations

import math
import statistics
import threading
from collections import deque
from dataclasses import dataclass

from modelserver.catalogue import RollbackPolicy
from modelserver.kinds.comparison import Comparison

# Rates made from counts are not exact in binary floats (0.07 - 0.06 > 0.01): a bound met
# exactly must not read as broken, so a figure breaks it only by more than this.
TOLERANCE = 1e-9


@dataclass(frozen=True)
class Outcome:
    """One request's answer: its HTTP status and the seconds its upstream took."""

    status: int
    seconds: float

    @property
    def failed(self) -> bool:
        """A 5xx is the server's failure, and so is no answer at all (status 0: the connection
        failed); a 4xx is the client's and says nothing of a version."""
        return self.status >= 500 or self.status == 0


def _checked_size(size: int) -> int:
    if size < 1:
        raise ValueError(f"a window holds at least one entry, not {size}")
    return size


class VersionWindow:
    """The last `size` outcomes of one version, with counters of everything ever added (the
    window forgets, the status page and metrics should not)."""

    def __init__(self, size: int) -> None:
        self._outcomes: deque[Outcome] = deque(maxlen=_checked_size(size))
        self._lock = threading.Lock()
        self._total = 0
        self._errors_total = 0

    @property
    def size(self) -> int:
        """How many outcomes the window holds at most."""
        return self._outcomes.maxlen or 0

    def add(self, outcome: Outcome) -> None:
        """Record one answer, pushing the oldest out of a full window."""
        with self._lock:
            self._outcomes.append(outcome)
            self._total += 1
            self._errors_total += outcome.failed

    def clear(self, size: int | None = None) -> None:
        """Empty the window (resized to `size` if given); the ever-counters stay."""
        with self._lock:
            self._outcomes = deque(maxlen=_checked_size(size) if size is not None else self._outcomes.maxlen)

    def _snapshot(self) -> list[Outcome]:
        with self._lock:
            return list(self._outcomes)

    def __len__(self) -> int:
        with self._lock:
            return len(self._outcomes)

    @property
    def total(self) -> int:
        """Outcomes ever added."""
        with self._lock:
            return self._total

    @property
    def errors_total(self) -> int:
        """5xx outcomes ever added."""
        with self._lock:
            return self._errors_total

    def error_rate(self) -> float | None:
        """The window's share of 5xx answers; None before any."""
        outcomes = self._snapshot()
        if not outcomes:
            return None
        return sum(outcome.failed for outcome in outcomes) / len(outcomes)

    def p99_seconds(self) -> float | None:
        """The window's 99th percentile of upstream time, nearest rank (a time that was
        measured, never one interpolated between two); None before any."""
        seconds = sorted(outcome.seconds for outcome in self._snapshot())
        if not seconds:
            return None
        return seconds[math.ceil(0.99 * len(seconds)) - 1]

    def median_seconds(self) -> float | None:
        """The window's median upstream time; None before any."""
        seconds = [outcome.seconds for outcome in self._snapshot()]
        return statistics.median(seconds) if seconds else None


class AgreementWindow:
    """The last `size` shadow comparisons of one model (primary's answer against the
    candidate's), with counters of everything ever added."""

    def __init__(self, size: int) -> None:
        self._pairs: deque[Comparison] = deque(maxlen=_checked_size(size))
        self._lock = threading.Lock()
        self._pairs_total = 0
        self._items_total = 0
        self._agreeing_total = 0

    @property
    def size(self) -> int:
        """How many pairs the window holds at most."""
        return self._pairs.maxlen or 0

    def add(self, comparison: Comparison) -> None:
        """Record one compared pair, pushing the oldest out of a full window."""
        with self._lock:
            self._pairs.append(comparison)
            self._pairs_total += 1
            self._items_total += comparison.items
            self._agreeing_total += comparison.agreeing

    def clear(self, size: int | None = None) -> None:
        """Empty the window (resized to `size` if given); the ever-counters stay."""
        with self._lock:
            self._pairs = deque(maxlen=_checked_size(size) if size is not None else self._pairs.maxlen)

    def _snapshot(self) -> list[Comparison]:
        with self._lock:
            return list(self._pairs)

    def __len__(self) -> int:
        with self._lock:
            return len(self._pairs)

    @property
    def pairs_total(self) -> int:
        """Pairs ever compared."""
        with self._lock:
            return self._pairs_total

    @property
    def items_total(self) -> int:
        """Items (rows, texts, masks) ever compared."""
        with self._lock:
            return self._items_total

    @property
    def agreeing_total(self) -> int:
        """Items on which the two versions ever agreed."""
        with self._lock:
            return self._agreeing_total

    def agreement(self) -> float | None:
        """The window's share of agreeing items (a pair of ten rows weighs ten); None before any."""
        pairs = self._snapshot()
        items = sum(pair.items for pair in pairs)
        return sum(pair.agreeing for pair in pairs) / items if items else None

    def largest_score_difference(self) -> float | None:
        """The largest score difference in the window, of the pairs whose kind measures one."""
        differences = [
            pair.largest_score_difference
            for pair in self._snapshot()
            if pair.largest_score_difference is not None
        ]
        return max(differences) if differences else None

    def top_k_overlap(self) -> float | None:
        """The window's mean top-k overlap, weighed by items, of the pairs whose kind measures one."""
        measured = [
            (pair.top_k_overlap, pair.items) for pair in self._snapshot() if pair.top_k_overlap is not None
        ]
        items = sum(weight for _, weight in measured)
        return sum(overlap * weight for overlap, weight in measured) / items if items else None


def _points(share: float) -> str:
    points = share * 100
    return f"{points:.1f} point" + ("" if points == 1 else "s")


def rollback_reason(
    policy: RollbackPolicy, primary: VersionWindow, candidate: VersionWindow, agreement: AgreementWindow
) -> str | None:
    """Why the candidate should lose its traffic, in one line with the figures, or None: the
    first bound broken of errors, latency, agreement. Nothing is judged before the candidate has
    `min_requests` answers, and latency or agreement not before the primary (or the shadow
    pairs) have as many: a few requests are noise, not a verdict."""
    answered = len(candidate)
    if answered < policy.min_requests:
        return None
    candidate_errors = candidate.error_rate() or 0.0
    primary_errors = primary.error_rate() or 0.0
    if candidate_errors - primary_errors > policy.max_error_rate_increase + TOLERANCE:
        return (
            f"candidate 5xx rate {candidate_errors:.1%} over its last {answered} requests, above the"
            f" primary's {primary_errors:.1%} + {_points(policy.max_error_rate_increase)}"
        )
    if policy.max_p99_ratio is not None and len(primary) >= policy.min_requests:
        candidate_p99 = candidate.p99_seconds() or 0.0
        primary_p99 = primary.p99_seconds() or 0.0
        bound = max(policy.max_p99_ratio * primary_p99, policy.p99_floor_ms / 1000)
        if candidate_p99 > bound + TOLERANCE:
            return (
                f"candidate p99 {candidate_p99 * 1000:.1f} ms over its last {answered} requests, above"
                f" {bound * 1000:.1f} ms (the primary's p99 {primary_p99 * 1000:.1f} ms"
                f" x {policy.max_p99_ratio:g}, at least {policy.p99_floor_ms:g} ms)"
            )
    pairs = len(agreement)
    if policy.min_agreement is not None and pairs >= policy.min_requests:
        agreed = agreement.agreement()
        if agreed is not None and agreed < policy.min_agreement - TOLERANCE:
            return (
                f"candidate agrees with the primary on {agreed:.1%} of the items of the last {pairs}"
                f" shadow pairs, below the minimum {policy.min_agreement:.1%}"
            )
    return None


@dataclass
class VersionWatch:
    """One model's whole watch: its primary's and candidate's recent answers and their shadow
    comparisons, judged together against its rollback policy."""

    primary: VersionWindow
    candidate: VersionWindow
    agreement: AgreementWindow

    @classmethod
    def for_policy(cls, policy: RollbackPolicy) -> VersionWatch:
        """Windows as long as the policy's `window`."""
        return cls(
            primary=VersionWindow(policy.window),
            candidate=VersionWindow(policy.window),
            agreement=AgreementWindow(policy.window),
        )

    def reason(self, policy: RollbackPolicy) -> str | None:
        """Why the candidate should lose its traffic now, or None (see `rollback_reason`)."""
        return rollback_reason(policy, self.primary, self.candidate, self.agreement)

    def clear(self, policy: RollbackPolicy | None = None) -> None:
        """Start the judgement afresh (after a rollback or a policy change: answers from before
        do not speak for what is served now), resized to `policy.window` if given; the
        ever-counters stay."""
        size = policy.window if policy is not None else None
        self.primary.clear(size)
        self.candidate.clear(size)
        self.agreement.clear(size)
