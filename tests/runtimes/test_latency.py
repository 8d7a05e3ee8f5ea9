"""The latency ratio on a fake clock: what is timed, when it stops, and the verdicts."""

from __future__ import annotations

import math
from itertools import cycle

import pytest

from pytest_compress.errors import DataError
from pytest_compress.runtimes.latency import (
    LatencyMeasurement,
    measure_latency_ratio,
    median_interval,
)


class FakeClock:
    """A clock that moves only when a fake model "runs": timing without real time."""

    def __init__(self) -> None:
        self.now = 0.0
        self.calls: list[str] = []

    def __call__(self) -> float:
        return self.now

    def model(self, name: str, seconds) -> object:
        """A call that takes ``seconds`` (a number, or an iterator of numbers, one per call)."""
        durations = seconds if hasattr(seconds, "__next__") else cycle([seconds])

        def run(batch: object) -> None:
            self.calls.append(name)
            self.now += next(durations)

        return run


def test_a_model_twice_as_slow_has_ratio_two_and_stops_at_the_minimum_rounds():
    clock = FakeClock()
    result = measure_latency_ratio(
        clock.model("float", 0.001),
        clock.model("compressed", 0.002),
        [1, 2, 3, 4],
        min_rounds=5,
        clock=clock,
    )
    assert (result.ratio, result.low, result.high) == pytest.approx((2.0, 2.0, 2.0))
    assert result.float_ms == pytest.approx(1.0) and result.compressed_ms == pytest.approx(2.0)
    assert result.rounds == 5 and not result.capped
    assert result.seconds == pytest.approx(5 * 4 * 0.003)
    assert result.verdict(2.5) == "pass" and result.verdict(2.0) == "pass"
    assert result.verdict(1.5) == "fail"


def test_warmup_runs_both_first_and_rounds_alternate_which_goes_first():
    clock = FakeClock()
    measure_latency_ratio(
        clock.model("f", 1.0),
        clock.model("c", 1.0),
        ["a", "b"],
        warmup=1,
        min_rounds=3,
        clock=clock,
    )
    warmup, rounds = clock.calls[:4], clock.calls[4:]
    assert warmup == ["f", "c", "f", "c"]
    assert rounds == ["f", "c", "f", "c", "c", "f", "c", "f", "f", "c", "f", "c"]


def test_it_goes_on_until_the_interval_is_tight():
    # Round ratios 1, 3, then 2 for ever: the range brackets the median until 9 rounds,
    # when the sign test's interval is [x(2), x(8)] = [2, 2].
    clock = FakeClock()
    compressed = iter([1.0, 3.0, *[2.0] * 100])
    result = measure_latency_ratio(
        clock.model("f", 1.0),
        clock.model("c", compressed),
        [0],
        warmup=0,
        clock=clock,
        max_seconds=1000.0,
    )
    assert result.rounds == 9 and not result.capped
    assert (result.ratio, result.low, result.high) == (2.0, 2.0, 2.0)


def test_a_noisy_measurement_stops_at_the_time_cap_and_straddles():
    clock = FakeClock()
    result = measure_latency_ratio(
        clock.model("f", 1.0),
        clock.model("c", cycle([1.5, 2.5])),
        [0],
        warmup=0,
        clock=clock,
        max_seconds=30.0,
    )
    # Each round takes 1 + 2 s on average: the 30 s cap ends it after 10 rounds.
    assert result.capped and result.rounds == 10
    assert (result.low, result.ratio, result.high) == (1.5, 2.0, 2.5)
    assert result.verdict(2.0) == "noisy"
    assert result.verdict(1.2) == "fail"
    assert result.verdict(2.5) == "pass"


def test_the_minimum_rounds_run_even_past_the_cap():
    clock = FakeClock()
    result = measure_latency_ratio(
        clock.model("f", 1.0),
        clock.model("c", cycle([1.0, 3.0])),
        [0],
        warmup=0,
        clock=clock,
        max_seconds=0.5,
        min_rounds=4,
    )
    assert result.rounds == 4 and result.capped


def test_a_tight_interval_around_the_budget_is_judged_on_the_median():
    tight = LatencyMeasurement(1.0, 1.02, 1.02, 0.99, 1.05, 20, 1.0, capped=False)
    assert tight.verdict(1.0) == "fail" and tight.verdict(1.03) == "pass"
    noisy = LatencyMeasurement(1.0, 1.02, 1.02, 0.8, 1.3, 20, 3.0, capped=True)
    assert noisy.verdict(1.0) == "noisy" and noisy.verdict(1.03) == "noisy"


def test_a_clock_too_coarse_to_see_the_float_model():
    clock = FakeClock()
    result = measure_latency_ratio(
        clock.model("f", 0.0), clock.model("c", 0.0), [0], clock=clock, warmup=0
    )
    assert result.ratio == 1.0 and not result.capped


def test_no_batches_is_a_data_error():
    with pytest.raises(DataError, match="at least one batch"):
        measure_latency_ratio(print, print, [])


@pytest.mark.parametrize(("n", "k"), [(5, 1), (6, 1), (9, 2), (10, 2), (20, 6), (50, 18)])
def test_the_median_interval_is_the_sign_tests(n, k):
    values = [float(i) for i in range(1, n + 1)]
    assert median_interval(values) == (k, n + 1 - k)
    # Coverage: the interval misses the median with probability 2 * P(B <= k - 1).
    miss = 2 * sum(math.comb(n, i) for i in range(k)) / 2**n
    assert miss <= 0.05 or k == 1
    tighter = 2 * sum(math.comb(n, i) for i in range(k + 1)) / 2**n
    assert tighter > 0.05  # k + 1 would fall short of 95 %
