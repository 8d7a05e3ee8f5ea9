"""Budgets as data, and the verdict: every budget a result breaks, not only the first.

A value exactly at its budget passes. Differences of metrics are float arithmetic
(``0.97 - 0.95`` is ``0.020000000000000018``), so a float comparison allows a relative
slack of ``EPSILON``; byte counts are integers and are compared exactly.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

EPSILON = 1e-9

# The budgets in the order a failure message lists them.
BUDGET_NAMES = (
    "max_accuracy_drop",
    "max_relative_drop",
    "max_size_ratio",
    "max_size",
    "min_sparsity",
)


@dataclass(frozen=True)
class Budgets:
    """The limits a compression check must respect; None means "no budget".

    - ``max_accuracy_drop``: float metric minus compressed metric, in the metric's
      units (0.01 = 1 percentage point of accuracy); the increase when lower is better.
    - ``max_relative_drop``: that drop as a fraction of the float metric.
    - ``max_size_ratio``: compressed bytes / float bytes.
    - ``max_size``: compressed bytes.
    - ``min_sparsity``: fraction of exact zeros among the compressible weights.
    """

    max_accuracy_drop: float | None = None
    max_relative_drop: float | None = None
    max_size_ratio: float | None = None
    max_size: int | None = None
    min_sparsity: float | None = None

    def given(self) -> dict[str, float | int]:
        """The budgets that were set, by name, in ``BUDGET_NAMES`` order."""
        return {name: value for name, value in asdict(self).items() if value is not None}

    def __bool__(self) -> bool:
        return bool(self.given())


@dataclass(frozen=True)
class BudgetCheck:
    """One budget held against one measured value.

    ``budget`` is a name from ``BUDGET_NAMES``, or ``"baseline_metric"`` /
    ``"baseline_size"`` for the stored-baseline gate, whose ``reference`` is the
    recorded value the ``limit`` was derived from.
    """

    budget: str
    actual: float
    limit: float
    ok: bool
    reference: float | None = None

    @property
    def is_baseline(self) -> bool:
        return self.budget.startswith("baseline_")


class BudgetExceeded(AssertionError):
    """A compression check broke a budget; the message lists every broken budget.

    An ``AssertionError`` so that a failed check reads like any failed assertion.
    ``result`` is the ``CompressionResult`` that broke it (None when unknown).
    """

    def __init__(self, message: str, result: object | None = None) -> None:
        super().__init__(message)
        self.result = result


def at_most(actual: float, limit: float) -> bool:
    """``actual <= limit``, exact for ints, with ``EPSILON`` relative slack for floats."""
    if isinstance(actual, int) and isinstance(limit, int):
        return actual <= limit
    return actual <= limit + EPSILON * max(1.0, abs(limit))


def at_least(actual: float, limit: float) -> bool:
    """``actual >= limit``, exact for ints, with ``EPSILON`` relative slack for floats."""
    if isinstance(actual, int) and isinstance(limit, int):
        return actual >= limit
    return actual >= limit - EPSILON * max(1.0, abs(limit))


def check_budgets(
    budgets: Budgets,
    *,
    accuracy_drop: float,
    relative_drop: float,
    size_ratio: float,
    compressed_size: int,
    sparsity: float,
) -> list[BudgetCheck]:
    """One ``BudgetCheck`` per budget given, in ``BUDGET_NAMES`` order.

    A NaN measurement breaks its budget (every comparison with NaN is false).
    """
    measured: dict[str, tuple[float, bool]] = {
        # name: (measured value, True when the budget is an upper bound)
        "max_accuracy_drop": (accuracy_drop, True),
        "max_relative_drop": (relative_drop, True),
        "max_size_ratio": (size_ratio, True),
        "max_size": (compressed_size, True),
        "min_sparsity": (sparsity, False),
    }
    checks = []
    for name, limit in budgets.given().items():
        actual, upper = measured[name]
        ok = at_most(actual, limit) if upper else at_least(actual, limit)
        checks.append(BudgetCheck(name, actual, limit, ok))
    return checks
