"""How much slower (or faster) a compressed model runs than the float one, with an interval.

Timings on a shared CI machine drift and jump, so the two models are timed interleaved
(batch by batch, alternating which goes first each round) and the answer is the median
of per-round ratios with a distribution-free 95 % interval: the order statistics that
bracket a median (the sign test's binomial). Rounds go on until the interval is tight
(half-width within ``target_halfwidth`` of the ratio) or the time is up. Torch-free: the
calls are any callables, and the clock can be injected so tests never depend on timing.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Literal

from ..errors import DataError

Verdict = Literal["pass", "fail", "noisy"]
CONFIDENCE = 0.95
# The time cap of one measurement: long enough for a tight interval on a quiet machine,
# short enough to run on every push.
DEFAULT_MAX_SECONDS = 3.0


@dataclass(frozen=True)
class LatencyMeasurement:
    """Medians per batch in milliseconds, the median ratio compressed/float and its interval.

    ``capped``: the rounds stopped at ``max_seconds``, before the interval was tight.
    """

    float_ms: float
    compressed_ms: float
    ratio: float
    low: float
    high: float
    rounds: int
    seconds: float
    capped: bool

    def verdict(self, budget_ratio: float) -> Verdict:
        """``fail`` when the whole interval is above the budget, ``pass`` when it is at or below.

        An interval that contains the budget is judged on the median when it is tight
        (the ratio is within ``target_halfwidth`` of the budget: close, but measured well);
        when the time ran out first it is ``noisy``: the caller judges the median and
        says the measurement could not tell.
        """
        if self.low > budget_ratio:
            return "fail"
        if self.high <= budget_ratio:
            return "pass"
        if self.capped:
            return "noisy"
        return "pass" if self.ratio <= budget_ratio else "fail"


def measure_latency_ratio(
    float_call: Callable[[Any], Any],
    compressed_call: Callable[[Any], Any],
    batches: Iterable[Any],
    *,
    max_seconds: float = DEFAULT_MAX_SECONDS,
    target_halfwidth: float = 0.05,
    min_rounds: int = 5,
    warmup: int = 2,
    clock: Callable[[], float] = time.perf_counter,
) -> LatencyMeasurement:
    """Time both calls over the same ``batches`` until the ratio's interval is tight.

    ``warmup`` passes of each first (caches, lazy initialisation, allocator). At least
    ``min_rounds`` rounds, then more until the 95 % interval's half-width is at most
    ``target_halfwidth`` times the ratio or ``max_seconds`` (of rounds, on ``clock``) passed.
    With fewer than 6 rounds the interval is the range of the ratios (93.75 % at 5).
    """
    inputs = list(batches)
    if not inputs:
        raise DataError("latency needs at least one batch of inputs; the data yielded none")
    for _ in range(warmup):
        for batch in inputs:
            float_call(batch)
            compressed_call(batch)
    float_times: list[float] = []
    compressed_times: list[float] = []
    ratios: list[float] = []
    start = clock()
    while True:
        float_time, compressed_time = _round(
            float_call, compressed_call, inputs, clock, float_first=len(ratios) % 2 == 0
        )
        float_times.append(float_time)
        compressed_times.append(compressed_time)
        ratios.append(_ratio(compressed_time, float_time))
        if len(ratios) < min_rounds:
            continue
        ratio = statistics.median(ratios)
        low, high = median_interval(ratios)
        if max(ratio - low, high - ratio) <= target_halfwidth * ratio:
            capped = False
            break
        if clock() - start >= max_seconds:
            capped = True
            break
    per_batch = 1000.0 / len(inputs)
    return LatencyMeasurement(
        float_ms=statistics.median(float_times) * per_batch,
        compressed_ms=statistics.median(compressed_times) * per_batch,
        ratio=ratio,
        low=low,
        high=high,
        rounds=len(ratios),
        seconds=clock() - start,
        capped=capped,
    )


def _round(
    float_call: Callable[[Any], Any],
    compressed_call: Callable[[Any], Any],
    inputs: list[Any],
    clock: Callable[[], float],
    *,
    float_first: bool,
) -> tuple[float, float]:
    """Seconds each call took over all batches, timed batch by batch in turn (so a slow
    spell of the machine falls on both), the order swapped every round."""
    calls = (float_call, compressed_call)
    totals = [0.0, 0.0]
    order = (0, 1) if float_first else (1, 0)
    for batch in inputs:
        for which in order:
            began = clock()
            calls[which](batch)
            totals[which] += clock() - began
    return totals[0], totals[1]


def _ratio(compressed: float, reference: float) -> float:
    if reference > 0:
        return compressed / reference
    return math.inf if compressed > 0 else 1.0  # a clock too coarse to see either


def median_interval(values: list[float], confidence: float = CONFIDENCE) -> tuple[float, float]:
    """A distribution-free interval for the median: ``[x(k), x(n+1-k)]`` of the sorted values.

    ``k`` is the largest with ``2 * P(B <= k-1) <= 1 - confidence`` for ``B ~ Binomial(n, 1/2)``
    (the sign test); with too few values for that, the whole range.
    """
    ordered = sorted(values)
    n = len(ordered)
    if n == 0:
        raise ValueError("median_interval needs at least one value")
    tail = (1.0 - confidence) / 2
    k, below = 1, 0.0  # below: P(B <= k-1)
    while k < (n + 1) / 2:
        below += math.comb(n, k - 1) / 2**n
        if below + math.comb(n, k) / 2**n > tail:
            break
        k += 1
    return ordered[k - 1], ordered[n - k]
