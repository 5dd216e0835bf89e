"""The rollback judge: each version's sliding window of answers, the shadow agreement window,
and which bound of a RollbackPolicy a candidate breaks, without TorchServe or Envoy."""

from __future__ import annotations

import threading

import pytest

from modelserver.catalogue import RollbackPolicy
from modelserver.kinds.comparison import Comparison
from modelserver.launcher.traffic.judge import (
    AgreementWindow,
    Outcome,
    VersionWatch,
    VersionWindow,
    rollback_reason,
)


def fill(window: VersionWindow, count: int, status: int = 200, seconds: float = 0.01) -> None:
    """Add `count` equal outcomes."""
    for _ in range(count):
        window.add(Outcome(status, seconds))


def answered(count: int, errors: int = 0, seconds: float = 0.01, size: int = 100) -> VersionWindow:
    """A window of `count` answers, the first `errors` of them 5xx."""
    window = VersionWindow(size)
    fill(window, errors, status=500, seconds=seconds)
    fill(window, count - errors, seconds=seconds)
    return window


def agreeing(pairs: int, items: int, agreeing_items: int, size: int = 100) -> AgreementWindow:
    """A window of `pairs` comparisons of `items` items each, `agreeing_items` of them agreeing."""
    window = AgreementWindow(size)
    for _ in range(pairs):
        window.add(Comparison(items=items, agreeing=agreeing_items))
    return window


# Only the bound under test can trip: the others are off or far away.
ERRORS_ONLY = RollbackPolicy(window=100, min_requests=20, max_error_rate_increase=0.05, max_p99_ratio=None)


def test_an_empty_version_window_has_no_figures() -> None:
    window = VersionWindow(10)
    assert len(window) == 0
    assert window.error_rate() is None
    assert window.p99_seconds() is None
    assert window.median_seconds() is None
    assert (window.total, window.errors_total) == (0, 0)


def test_a_version_window_slides_and_counts_everything_ever_added() -> None:
    window = VersionWindow(5)
    fill(window, 5, status=503)
    fill(window, 3, status=200)
    assert len(window) == 5
    assert window.error_rate() == pytest.approx(2 / 5)  # three of the five 503s slid out
    assert (window.total, window.errors_total) == (8, 5)


def test_only_5xx_count_as_errors() -> None:
    window = VersionWindow(10)
    for status in (200, 404, 429, 499, 500, 503, 504, 201):
        window.add(Outcome(status, 0.0))
    assert window.error_rate() == pytest.approx(3 / 8)


def test_p99_is_the_nearest_rank_and_the_median_the_middle() -> None:
    window = VersionWindow(1000)
    for milliseconds in range(200, 0, -1):  # 1 .. 200 ms, added out of order
        window.add(Outcome(200, milliseconds / 1000))
    # Nearest rank: ceil(0.99 * 200) = 198th smallest.
    assert window.p99_seconds() == pytest.approx(0.198)
    assert window.median_seconds() == pytest.approx(0.1005)
    window.clear()
    for milliseconds in range(1, 101):
        window.add(Outcome(200, milliseconds / 1000))
    assert window.p99_seconds() == pytest.approx(0.099)  # ceil(99.0) = 99th
    window.add(Outcome(200, 5.0))
    assert window.p99_seconds() == pytest.approx(0.100)  # ceil(99.99) = 100th of 101


def test_p99_of_a_single_outcome_is_that_outcome() -> None:
    window = VersionWindow(10)
    window.add(Outcome(200, 0.25))
    assert window.p99_seconds() == pytest.approx(0.25)
    assert window.median_seconds() == pytest.approx(0.25)


def test_a_window_holds_at_least_one_entry() -> None:
    with pytest.raises(ValueError, match="at least one"):
        VersionWindow(0)
    with pytest.raises(ValueError, match="at least one"):
        AgreementWindow(0)


def test_an_empty_agreement_window_has_no_figures() -> None:
    window = AgreementWindow(10)
    assert len(window) == 0
    assert window.agreement() is None
    assert window.largest_score_difference() is None
    assert window.top_k_overlap() is None
    window.add(Comparison(items=0, agreeing=0))
    assert len(window) == 1
    assert window.agreement() is None  # a pair of no items says nothing


def test_agreement_is_weighed_by_items_and_slides() -> None:
    window = AgreementWindow(3)
    window.add(Comparison(items=1, agreeing=0))  # slides out below
    window.add(Comparison(items=10, agreeing=10))
    window.add(Comparison(items=2, agreeing=1, largest_score_difference=0.25))
    window.add(Comparison(items=8, agreeing=4, largest_score_difference=0.5))
    assert len(window) == 3
    assert window.agreement() == pytest.approx(15 / 20)
    assert window.largest_score_difference() == pytest.approx(0.5)
    assert (window.pairs_total, window.items_total, window.agreeing_total) == (4, 21, 15)


def test_top_k_overlap_is_the_item_weighted_mean_of_the_pairs_that_have_one() -> None:
    window = AgreementWindow(10)
    window.add(Comparison(items=1, agreeing=1, top_k_overlap=1.0))
    window.add(Comparison(items=3, agreeing=2, top_k_overlap=0.6))
    window.add(Comparison(items=50, agreeing=0))  # no overlap measured: not in the mean
    assert window.top_k_overlap() == pytest.approx((1.0 * 1 + 0.6 * 3) / 4)
    assert window.largest_score_difference() is None


def test_windows_take_outcomes_from_two_threads() -> None:
    window = VersionWindow(50)

    def add_many() -> None:
        fill(window, 5000, status=500)

    threads = [threading.Thread(target=add_many) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert (window.total, window.errors_total, len(window)) == (10_000, 10_000, 50)


def test_nothing_is_judged_before_the_candidate_has_min_requests() -> None:
    primary = answered(100)
    assert rollback_reason(ERRORS_ONLY, primary, answered(19, errors=19), AgreementWindow(100)) is None
    reason = rollback_reason(ERRORS_ONLY, primary, answered(20, errors=20), AgreementWindow(100))
    assert reason is not None
    assert "100.0%" in reason and "last 20 requests" in reason


def test_the_error_bound_trips_only_above_the_primarys_rate_plus_the_increase() -> None:
    primary = answered(100, errors=1)  # 1%
    at_the_edge = answered(100, errors=6)  # 6% = 1% + 5 points: not above
    assert rollback_reason(ERRORS_ONLY, primary, at_the_edge, AgreementWindow(100)) is None
    above = answered(100, errors=7)
    reason = rollback_reason(ERRORS_ONLY, primary, above, AgreementWindow(100))
    assert reason == (
        "candidate 5xx rate 7.0% over its last 100 requests, above the primary's 1.0% + 5.0 points"
    )


def test_an_exact_edge_is_not_broken_by_float_rounding() -> None:
    policy = RollbackPolicy(window=100, min_requests=20, max_error_rate_increase=0.01, max_p99_ratio=None)
    # 0.07 - 0.06 is 0.010000000000000009 in binary floats.
    assert (
        rollback_reason(policy, answered(100, errors=6), answered(100, errors=7), AgreementWindow(100))
        is None
    )


def test_a_primary_without_answers_counts_as_error_free() -> None:
    policy = RollbackPolicy(window=100, min_requests=20, max_error_rate_increase=0.01, max_p99_ratio=None)
    reason = rollback_reason(policy, VersionWindow(100), answered(20, errors=20), AgreementWindow(100))
    assert reason == (
        "candidate 5xx rate 100.0% over its last 20 requests, above the primary's 0.0% + 1.0 point"
    )
    assert rollback_reason(policy, VersionWindow(100), answered(20), AgreementWindow(100)) is None


def test_the_latency_bound_trips_above_the_ratio_of_the_primarys_p99() -> None:
    policy = RollbackPolicy(window=100, min_requests=20, max_p99_ratio=2.0, p99_floor_ms=50)
    primary = answered(100, seconds=0.1)
    assert rollback_reason(policy, primary, answered(20, seconds=0.2), AgreementWindow(100)) is None
    reason = rollback_reason(policy, primary, answered(20, seconds=0.201), AgreementWindow(100))
    assert reason is not None
    assert reason.startswith("candidate p99 201.0 ms over its last 20 requests, above 200.0 ms")


def test_the_latency_bound_never_trips_below_the_floor() -> None:
    policy = RollbackPolicy(window=100, min_requests=20, max_p99_ratio=2.0, p99_floor_ms=50)
    primary = answered(100, seconds=0.001)  # 2 x 1 ms would be 2 ms: noise
    assert rollback_reason(policy, primary, answered(20, seconds=0.05), AgreementWindow(100)) is None
    reason = rollback_reason(policy, primary, answered(20, seconds=0.051), AgreementWindow(100))
    assert reason is not None and "above 50.0 ms" in reason


def test_the_latency_bound_waits_for_the_primary_and_can_be_off() -> None:
    policy = RollbackPolicy(window=100, min_requests=20, max_p99_ratio=2.0, p99_floor_ms=0)
    slow = answered(20, seconds=10.0)
    assert rollback_reason(policy, answered(19, seconds=0.1), slow, AgreementWindow(100)) is None
    assert rollback_reason(policy, answered(20, seconds=0.1), slow, AgreementWindow(100)) is not None
    off = RollbackPolicy(window=100, min_requests=20, max_p99_ratio=None)
    assert rollback_reason(off, answered(20, seconds=0.1), slow, AgreementWindow(100)) is None


def test_the_agreement_bound_trips_below_the_minimum_once_there_are_enough_pairs() -> None:
    policy = RollbackPolicy(window=100, min_requests=20, max_p99_ratio=None, min_agreement=0.9)
    primary, candidate = answered(100), answered(100)
    assert rollback_reason(policy, primary, candidate, agreeing(19, items=10, agreeing_items=0)) is None
    assert rollback_reason(policy, primary, candidate, agreeing(20, items=10, agreeing_items=9)) is None
    reason = rollback_reason(policy, primary, candidate, agreeing(20, items=10, agreeing_items=8))
    assert reason == (
        "candidate agrees with the primary on 80.0% of the items of the last 20 shadow pairs,"
        " below the minimum 90.0%"
    )
    no_minimum = RollbackPolicy(window=100, min_requests=20, max_p99_ratio=None)
    assert rollback_reason(no_minimum, primary, candidate, agreeing(20, items=10, agreeing_items=0)) is None


def test_the_first_bound_broken_is_the_reason() -> None:
    policy = RollbackPolicy(
        window=100, min_requests=20, max_error_rate_increase=0.01, max_p99_ratio=2.0, min_agreement=0.9
    )
    primary = answered(100, seconds=0.1)
    disagreeing = agreeing(20, items=1, agreeing_items=0)
    everything = rollback_reason(policy, primary, answered(20, errors=20, seconds=1.0), disagreeing)
    assert everything is not None and everything.startswith("candidate 5xx rate")
    slow_and_wrong = rollback_reason(policy, primary, answered(20, seconds=1.0), disagreeing)
    assert slow_and_wrong is not None and slow_and_wrong.startswith("candidate p99")
    wrong = rollback_reason(policy, primary, answered(20, seconds=0.1), disagreeing)
    assert wrong is not None and wrong.startswith("candidate agrees")


def test_a_watch_is_sized_by_the_policy_and_judges_with_it() -> None:
    policy = RollbackPolicy(window=30, min_requests=10, max_error_rate_increase=0.0, max_p99_ratio=None)
    watch = VersionWatch.for_policy(policy)
    assert (watch.primary.size, watch.candidate.size, watch.agreement.size) == (30, 30, 30)
    fill(watch.primary, 40)
    assert len(watch.primary) == 30
    fill(watch.candidate, 9, status=502)
    assert watch.reason(policy) is None
    fill(watch.candidate, 1, status=502)
    reason = watch.reason(policy)
    assert reason is not None and reason.startswith("candidate 5xx rate 100.0% over its last 10 requests")


def test_clearing_a_watch_starts_the_judgement_afresh_and_keeps_the_counters() -> None:
    policy = RollbackPolicy(window=30, min_requests=10, max_error_rate_increase=0.0, max_p99_ratio=None)
    watch = VersionWatch.for_policy(policy)
    fill(watch.primary, 30)
    fill(watch.candidate, 10, status=500)
    watch.agreement.add(Comparison(items=4, agreeing=3))
    assert watch.reason(policy) is not None
    watch.clear()
    assert (len(watch.primary), len(watch.candidate), len(watch.agreement)) == (0, 0, 0)
    assert watch.reason(policy) is None
    assert (watch.primary.total, watch.candidate.total, watch.candidate.errors_total) == (30, 10, 10)
    assert (watch.agreement.pairs_total, watch.agreement.items_total, watch.agreement.agreeing_total) == (
        1,
        4,
        3,
    )
    assert watch.candidate.size == 30


def test_clearing_a_watch_for_a_new_policy_resizes_its_windows() -> None:
    watch = VersionWatch.for_policy(RollbackPolicy(window=30, min_requests=10))
    watch.clear(RollbackPolicy(window=8, min_requests=5))
    assert (watch.primary.size, watch.candidate.size, watch.agreement.size) == (8, 8, 8)
    fill(watch.candidate, 20)
    assert len(watch.candidate) == 8
