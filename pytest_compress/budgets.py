"""Budgets: one registry of what a check may be held to, and the verdict against it.

Each ``Budget`` in ``BUDGETS`` says everything the rest of the package needs to know:
its name (the marker's and ``compress(...)``'s keyword), the ``CompressionResult``
field it limits, whether that is a ceiling or a floor, whether more compression helps
meet it, how its values read and how a raw value is checked. The marker's signature,
the failure text, the reports, the JSON and the baseline all follow from the registry,
so a new budget is one entry here (plus the measurement it limits).

A value exactly at its budget passes. Differences of metrics are float arithmetic
(``0.97 - 0.95`` is ``0.020000000000000018``), so a float comparison allows a relative
slack of ``EPSILON``; byte counts are integers and are compared exactly. Standard
library only.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from .metrics import MetricKind
from .units import (
    DURATION_FORMS,
    SIZE_FORMS,
    distinct,
    format_fraction,
    format_ratio,
    format_size,
    parse_duration,
    parse_size,
)

EPSILON = 1e-9


def _number(value: object, forms: str) -> float:
    # bool is an int subclass, and True as a budget is a mistake, not 1.0
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        raise ValueError(f"must be a number ({forms}), got {value!r}")
    if math.isinf(value):
        raise ValueError(f"must be finite ({forms}), got {value!r}")
    return float(value)


def non_negative(
    forms: str, *, most: float | None = None, beyond: str = ""
) -> Callable[[object], float]:
    """A parser of finite numbers >= 0; ``forms`` says what the number means.

    With ``most``, a larger number is refused too; ``beyond`` says why.
    """

    def parse(value: object) -> float:
        number = _number(value, forms)
        if number < 0:
            raise ValueError(f"must not be negative ({forms}), got {value!r}")
        if most is not None and number > most:
            raise ValueError(f"must be at most {most:g} ({forms}): {beyond}; got {value!r}")
        return number

    return parse


def positive(forms: str) -> Callable[[object], float]:
    """A parser of finite numbers > 0 (a ratio of times: 0 no model can reach)."""

    def parse(value: object) -> float:
        number = _number(value, forms)
        if number <= 0:
            raise ValueError(f"must be more than 0 ({forms}), got {value!r}")
        return number

    return parse


def fraction(forms: str, *, zero: str = "") -> Callable[[object], float]:
    """A parser of numbers from 0 to 1; ``forms`` says what the fraction means.

    With ``zero``, 0 is refused too; ``zero`` says why.
    """

    def parse(value: object) -> float:
        number = _number(value, forms)
        if not 0 <= number <= 1:
            raise ValueError(f"must be {forms}, got {value!r}")
        if zero and number == 0:
            raise ValueError(f"must be more than 0: {zero}; got {value!r}")
        return number

    return parse


def _never(limit: float, metric: MetricKind) -> str | None:
    return None


def _fraction_drop(limit: float, metric: MetricKind) -> str | None:
    if metric.percent and limit >= 1:
        return (
            f"{metric.name} is a fraction of 1, so it never {metric.drop_word}s by 1 (100 pp) "
            "or more; give a limit below 1, e.g. 0.01"
        )
    return None


def _relative_drop(limit: float, metric: MetricKind) -> str | None:
    if metric.higher_is_better and limit >= 1:
        return (
            "a relative drop of 1 (100 %) is a higher-is-better metric falling to 0, which only "
            "a metric that can be negative goes below; give a limit below 1, e.g. 0.02 "
            "(for a signed metric, use max_accuracy_drop)"
        )
    return None


def size(value: object) -> int:
    """Bytes from an int or a string such as ``"2 MB"``."""
    try:
        return parse_size(value)
    except ValueError:
        raise ValueError(f"must be {SIZE_FORMS} and not negative, got {value!r}") from None


def duration(value: object) -> float:
    """Seconds from a number or a string such as ``"5 ms"``, more than 0."""
    try:
        seconds = parse_duration(value)
    except ValueError:
        raise ValueError(f"must be {DURATION_FORMS}, got {value!r}") from None
    if seconds <= 0:
        raise ValueError(f"must be more than 0: no model runs in no time; got {value!r}")
    return seconds


def _milliseconds(seconds: float, extra_digits: int = 0) -> str:
    return f"{seconds * 1000:.{2 + extra_digits}f} ms"


@dataclass(frozen=True)
class Budget:
    """One kind of budget.

    - ``name``: the keyword users write (``max_size_ratio``).
    - ``measures``: the ``CompressionResult`` field it limits (``size_ratio``).
    - ``upper``: a ceiling (``measured <= limit``); else a floor (``measured >= limit``).
    - ``eased_by_compression``: more compression can only help meet it (size, sparsity);
      a search treats the others (the metric's) as the damage it must stay within.
    - ``label``: the words before the value in a failure message (``compressed size``);
      ``short``: in a search trail (``size``). ``{drop}`` stands for the metric's
      ``drop`` / ``increase``, ``{metric}`` for its name.
    - ``render``: how a value reads, given the metric and extra digits.
    - ``parse``: checks a raw value and returns it; ``ValueError`` says what is wrong. A
      limit that no measurement can break is refused here when that does not depend on
      the metric (``min_sparsity=0``, a ``max_size_ratio`` above 1).
    - ``cannot_fail``: why a parsed limit cannot fail for a metric of this kind (None
      when it can): ``max_accuracy_drop=1`` for a fraction such as top-1 accuracy.
      The plugin asks at collection with what the marker says of the metric, and the
      runner again when the metric is known.
    - ``needs_runtime``: it limits the deployed model (``runtime=``), which a simulated
      check does not have; the plugin refuses it at collection without one.
    """

    name: str
    measures: str
    upper: bool
    eased_by_compression: bool
    label: str
    short: str
    render: Callable[[float, MetricKind, int], str]
    parse: Callable[[object], float | int]
    cannot_fail: Callable[[float, MetricKind], str | None] = _never
    needs_runtime: bool = False

    def holds(self, actual: float, limit: float) -> bool:
        return at_most(actual, limit) if self.upper else at_least(actual, limit)

    def words(self, template: str, metric: MetricKind) -> str:
        return template.format(drop=metric.drop_word, metric=metric.name)


# The result fields that the compressed file's size decides.
SIZE_MEASURES = ("compressed_size", "size_ratio")

BUDGETS: dict[str, Budget] = {
    budget.name: budget
    for budget in (
        Budget(
            "max_accuracy_drop",
            "accuracy_drop",
            upper=True,
            eased_by_compression=False,
            label="{drop}",
            short="{drop}",
            render=lambda v, m, d: m.difference(v, d),
            parse=non_negative("in the metric's units, e.g. 0.01 = 1 percentage point of accuracy"),
            cannot_fail=_fraction_drop,
        ),
        Budget(
            "max_relative_drop",
            "relative_drop",
            upper=True,
            eased_by_compression=False,
            label="{metric} relative {drop}",
            short="relative {drop}",
            render=lambda v, m, d: format_fraction(v, d),
            parse=non_negative("a fraction of the float metric, e.g. 0.02"),
            cannot_fail=_relative_drop,
        ),
        Budget(
            "max_size_ratio",
            "size_ratio",
            upper=True,
            eased_by_compression=True,
            label="ratio",
            short="ratio",
            render=lambda v, m, d: format_ratio(v, d),
            # Every recipe stores the weights in at most 32 bits plus a scale per channel,
            # and the float size counts torch.save's own overhead: only a model of about
            # one weight per channel compresses to more than its float size. A limit
            # above 1 lets a "compressed" model grow, and one such as 1e300 cannot fail.
            parse=non_negative(
                "compressed bytes / float bytes, e.g. 0.3",
                most=1,
                beyond="a larger limit lets the compressed model be bigger than the float one",
            ),
        ),
        Budget(
            "max_size",
            "compressed_size",
            upper=True,
            eased_by_compression=True,
            label="compressed size",
            short="size",
            render=lambda v, m, d: format_size(v, d),
            parse=size,
        ),
        Budget(
            "min_sparsity",
            "sparsity",
            upper=False,
            eased_by_compression=True,
            label="sparsity",
            short="sparsity",
            render=lambda v, m, d: format_fraction(v, d),
            parse=fraction(
                "a fraction of zero weights between 0 and 1, e.g. 0.8",
                zero="sparsity is never below 0, so a floor of 0 cannot fail",
            ),
        ),
        Budget(
            "max_fidelity_gap",
            "fidelity_gap",
            upper=True,
            eased_by_compression=False,
            label="gap between simulated and deployed {metric}",
            short="fidelity gap",
            render=lambda v, m, d: m.difference(v, d),
            parse=non_negative(
                "in the metric's units: |deployed - simulated|, e.g. 0.005 = 0.5 pp"
            ),
            cannot_fail=_fraction_drop,
            needs_runtime=True,
        ),
        Budget(
            "max_latency_ratio",
            "latency_ratio",
            upper=True,
            eased_by_compression=False,
            label="latency ratio",
            short="latency ratio",
            render=lambda v, m, d: format_ratio(v, d),
            parse=positive("compressed time per batch / float time per batch, e.g. 0.8"),
            needs_runtime=True,
        ),
        Budget(
            "max_latency",
            "latency",
            upper=True,
            eased_by_compression=False,
            label="latency per batch",
            short="latency",
            render=lambda v, m, d: _milliseconds(v, d),
            parse=duration,
            needs_runtime=True,
        ),
    )
}
# The budgets that judge a deployed model's run time: measured afresh on every run (they
# belong to the machine), judged on an interval rather than one number.
LATENCY_BUDGETS = ("max_latency_ratio", "max_latency")
# The budgets in the order a failure message lists them.
BUDGET_NAMES = tuple(BUDGETS)
# Not a budget: the check that every result whose compressed metric is NaN fails.
NAN_CHECK = "nan_metric"
# Not a budget: the compressed model breaks what its recipe claims (engine/invariants.py).
INVARIANT_CHECK = "recipe_invariant"


class Budgets(Mapping[str, float]):
    """The limits a compression check must respect, by budget name; unset means no budget.

    ``Budgets(max_accuracy_drop=0.01, max_size="2 MB")``: each value is checked by its
    ``Budget.parse`` (``ValueError`` naming the budget), ``None`` leaves it unset. Read a
    limit as ``budgets["max_size"]`` or ``budgets.max_size`` (None when unset); iterate
    for the set names, in ``BUDGET_NAMES`` order.
    """

    __slots__ = ("_limits",)
    _limits: dict[str, float | int]  # declared, or mypy would read it through __getattr__

    def __init__(self, **limits: Any) -> None:
        unknown = [name for name in limits if name not in BUDGETS]
        if unknown:
            raise TypeError(f"unknown budget {unknown[0]!r}; budgets are {', '.join(BUDGET_NAMES)}")
        parsed: dict[str, float | int] = {}
        for name, budget in BUDGETS.items():
            if limits.get(name) is not None:
                try:
                    parsed[name] = budget.parse(limits[name])
                except ValueError as error:
                    raise ValueError(f"{name} {error}") from None
        object.__setattr__(self, "_limits", parsed)

    def __getitem__(self, name: str) -> float:
        return self._limits[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._limits)

    def __len__(self) -> int:
        return len(self._limits)

    @property
    def limit_size(self) -> bool:
        """Whether a budget limits the compressed size (``max_size``, ``max_size_ratio``)."""
        return any(BUDGETS[name].measures in SIZE_MEASURES for name in self._limits)

    def __getattr__(self, name: str) -> float | None:
        if name in BUDGETS:
            return self._limits.get(name)
        raise AttributeError(f"'Budgets' has no attribute {name!r}")

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError("Budgets is immutable")

    def __hash__(self) -> int:
        return hash(tuple(self._limits.items()))

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Budgets):
            return self._limits == other._limits
        return NotImplemented

    def __repr__(self) -> str:
        return f"Budgets({', '.join(f'{k}={v!r}' for k, v in self._limits.items())})"

    def given(self) -> dict[str, float | int]:
        """The budgets that were set, by name, in ``BUDGET_NAMES`` order."""
        return dict(self._limits)

    def cannot_fail(self, metric: MetricKind) -> tuple[str, str] | None:
        """(budget name, ``limit cannot fail: why``) of the first budget that no
        measurement of ``metric`` can break, or None."""
        for name, limit in self._limits.items():
            reason = BUDGETS[name].cannot_fail(limit, metric)
            if reason is not None:
                return name, f"{limit!r} cannot fail: {reason}"
        return None

    def check(self, measured: Mapping[str, float]) -> list[BudgetCheck]:
        """One ``BudgetCheck`` per budget set, against ``measured[budget.measures]``.

        A NaN measurement breaks its budget (every comparison with NaN is false).
        """
        checks = []
        for name, limit in self._limits.items():
            budget = BUDGETS[name]
            actual = measured[budget.measures]
            checks.append(BudgetCheck(name, actual, limit, budget.holds(actual, limit)))
        return checks


@dataclass(frozen=True)
class BudgetCheck:
    """One budget held against one measured value.

    ``budget`` is a name from ``BUDGET_NAMES``, or ``"baseline_metric"`` /
    ``"baseline_size"`` / ``"baseline_search"`` for the stored-baseline gate, whose
    ``reference`` is the recorded value the ``limit`` was derived from.
    """

    budget: str
    actual: float
    limit: float
    ok: bool
    reference: float | None = None

    @property
    def is_baseline(self) -> bool:
        return self.budget.startswith("baseline_")

    def describe(self, metric: MetricKind, *, short: bool = False) -> str:
        """``drop 2.9 pp > 2.0 pp``: the value, the comparison and the limit in words."""
        budget = BUDGETS.get(self.budget)
        if self.budget == NAN_CHECK:
            return "the compressed model produced NaN"
        if self.budget == INVARIANT_CHECK:
            return f"the compressed model breaks its recipe in {self.actual:g} layers"
        if budget is None:
            return f"{self.budget} {self.actual:g} vs limit {self.limit:g}"
        label = budget.words(budget.short if short else budget.label, metric)
        # the digits that tell them apart: a broken budget never reads 30.0% < 30.0%
        actual, limit = distinct(self.actual, self.limit, lambda v, d: budget.render(v, metric, d))
        return f"{label} {actual} {'>' if budget.upper else '<'} {limit}"


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
