"""The lines a deployed check (``runtime=``) adds to its message: the artifact, the gap
between the simulation and the runtime, and the latency with its interval.

Torch-free: the plugin renders results when it loads. ``result`` is a
``CompressionResult`` (read by attribute, to keep this module below it).
"""

from __future__ import annotations

from typing import Any

from ..budgets import BudgetCheck
from ..units import distinct, format_ratio


def deployed_lines(result: Any, by_budget: dict[str, BudgetCheck]) -> list[str]:
    """Nothing for a simulated check; else the artifact, fidelity and latency lines."""
    if result.runtime == "simulate":
        return []
    lines = [f"deployed on {result.runtime}: {result.saved_as}"]
    if result.simulated_metric is not None:
        lines.append(_fidelity_line(result, by_budget.get("max_fidelity_gap")))
    if result.latency_measured is not None:
        lines.append(_latency_line(result, by_budget.get("max_latency_ratio")))
        absolute = by_budget.get("max_latency")
        if absolute is not None:
            lines.append(_absolute_line(absolute))
    return lines


def _fidelity_line(result: Any, check: BudgetCheck | None) -> str:
    kind = result.metric_kind
    simulated, deployed = distinct(result.simulated_metric, result.compressed_metric, kind.value)
    head = f"{result.metric} simulated {simulated} -> {result.runtime} {deployed}"
    if check is None:
        return f"{head} (fidelity gap {kind.difference(result.fidelity_gap)})"
    if check.ok:
        gap, limit = kind.difference(check.actual), kind.difference(check.limit)
        return f"{head} (fidelity gap {gap}, budget {limit}): ok"
    gap, limit = distinct(check.actual, check.limit, kind.difference)
    return f"{head}: fidelity gap {gap} > {limit} allowed"


def _latency_line(result: Any, check: BudgetCheck | None) -> str:
    timed = result.latency_measured
    low, high = format_ratio(timed.low), format_ratio(timed.high)
    head = (
        f"latency {timed.float_ms:.3g} ms -> {timed.compressed_ms:.3g} ms per batch: ratio "
        f"{format_ratio(timed.ratio)} (95% interval {low}-{high}, {timed.rounds} rounds "
        f"in {timed.seconds:.1f} s)"
    )
    if check is None:
        return head
    limit = _limit(check.limit)
    if result.noisy:
        verdict = "ok" if check.ok else f"median {format_ratio(timed.ratio)} > {limit}"
        return (
            f"{head}, budget {limit}: {verdict}, but the measurement was noisy: the interval "
            f"straddles the budget after the time cap, so the median decided; for a clear "
            "verdict allow more time (--compress-latency-seconds) or run on a quieter machine"
        )
    if check.ok:
        return f"{head}, budget {limit}: ok"
    return f"{head}: the whole interval lies above {limit} allowed"


def _limit(ratio: float) -> str:
    """A ratio budget in words: two decimals, or two significant digits below 0.01 (a
    budget of 0.001 never reads 0.00)."""
    return format_ratio(ratio) if ratio >= 0.01 else f"{ratio:.2g}"


def _absolute_line(check: BudgetCheck) -> str:
    actual, limit = distinct(check.actual * 1000, check.limit * 1000, _ms)
    if check.ok:
        return f"latency per batch {actual} (budget {limit}): ok"
    return f"latency per batch {actual} > {limit} allowed"


def _ms(value: float, extra_digits: int) -> str:
    return f"{value:.{2 + extra_digits}f} ms"
