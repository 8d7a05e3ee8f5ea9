"""``Trial``: one evaluated candidate recipe, the unit that search and mixed precision step on.

The engine never evaluates or applies budgets itself when it searches: the caller
passes a callback ``trial(quantize_spec, prune_spec) -> Trial`` that compresses,
measures and holds the result against the check's budgets (the plugin runs its usual
check), and the engine decides what to try next from the verdicts alone.

A trial's broken budgets come in two kinds, and search needs to tell them apart:

- *damage* budgets (``max_accuracy_drop``, ``max_relative_drop``, the baseline metric
  gate, and any name this module does not know) break when a recipe compresses **too
  much**;
- *floor* budgets (``FLOOR_BUDGETS``: ``max_size_ratio``, ``max_size``, ``min_sparsity``
  and the baseline size gate) break when a recipe compresses **too little**;
- the deployed artifact's budgets (``DEPLOYED_BUDGETS``: fidelity, latency) are neither.

More compression can only cure a floor violation and only cause a damage violation
(the monotonicity every search here assumes).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from ..budgets import BUDGETS, INVARIANT_CHECK, BudgetCheck
from ..metrics import MetricKind
from ..units import format_size

# Budgets that more compression helps meet (and the baseline's size gate); every other
# broken budget counts as damage.
FLOOR_BUDGETS = (
    *(name for name, budget in BUDGETS.items() if budget.eased_by_compression),
    "baseline_size",
)
# Budgets of a deployed artifact (fidelity, latency): neither more nor less compression
# of the recipe says how they move, so they are no damage for a search or a blame.
DEPLOYED_BUDGETS = tuple(name for name, budget in BUDGETS.items() if budget.needs_runtime)
# Neither damage nor floor: a deployed artifact's budgets, and a recipe the model breaks.
NOT_DAMAGE = (*FLOOR_BUDGETS, *DEPLOYED_BUDGETS, INVARIANT_CHECK)


@dataclass(frozen=True)
class Trial:
    """One candidate recipe, evaluated: its metric, its size and the budgets it broke.

    - ``metric``: the compressed model's metric; ``size``: its compressed bytes, or None
      when the caller left them unmeasured (a failed search trial with no size budget).
    - ``broken``: the names of the broken budgets (``BUDGET_NAMES`` of ``budgets.py``,
      or ``"baseline_metric"`` / ``"baseline_size"``); empty when every budget holds.
    - ``violations``: one short human text per broken budget, e.g. ``"drop 2.9 pp > 2.0 pp"``.
    - ``setting``: what was tried (a sparsity, an alpha, a bit width, a layer name);
      the search fills it in, a callback may leave it None.
    - ``result``: the caller's own record of the evaluation (e.g. its
      ``CompressionResult``), carried along untouched so the chosen trial's full result
      needs no second evaluation. Not compared, not shown.
    """

    metric: float
    size: int | None
    broken: tuple[str, ...] = ()
    violations: tuple[str, ...] = ()
    setting: Any = None
    result: Any = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "broken", tuple(self.broken))
        object.__setattr__(self, "violations", tuple(self.violations))
        if any(not isinstance(name, str) for name in self.broken):
            raise ValueError(f"Trial.broken must be budget names (strings), got {self.broken!r}")

    @property
    def passed(self) -> bool:
        """Every budget holds."""
        return not self.broken

    @property
    def damaged(self) -> bool:
        """A budget that more compression breaks (the metric) is broken: compress less."""
        return any(name not in NOT_DAMAGE for name in self.broken)

    @property
    def short_of_floor(self) -> bool:
        """Only budgets that more compression helps (size, sparsity) are broken."""
        return bool(self.broken) and not self.damaged

    def verdict(self) -> str:
        """``ok``, or what broke: ``drop 2.9 pp > 2.0 pp; ratio 0.31 > 0.30``."""
        if self.passed:
            return "ok"
        return "; ".join(self.violations) if self.violations else "broke " + ", ".join(self.broken)

    @classmethod
    def from_result(cls, result: Any, setting: Any = None) -> Trial:
        """A trial from a ``CompressionResult`` (or anything with the same fields).

        Reads ``compressed_metric``, ``compressed_size`` (negative: not measured),
        ``violations`` (``BudgetCheck`` objects), ``metric`` (the metric's name: accuracy
        renders in percent) and ``higher_is_better``; keeps ``result`` itself as the payload.
        """
        metric = MetricKind.named(
            getattr(result, "metric", "accuracy"), getattr(result, "higher_is_better", True)
        )
        checks = list(result.violations)
        size = int(result.compressed_size)  # negative: not measured
        return cls(
            metric=float(result.compressed_metric),
            size=size if size >= 0 else None,
            broken=tuple(check.budget for check in checks),
            violations=tuple(describe_violation(check, metric) for check in checks),
            setting=setting,
            result=result,
        )


def checked_trial(outcome: object, setting: Any) -> Trial:
    """A trial callback's ``outcome`` with ``setting`` filled in; ``TypeError`` for a non-Trial."""
    if not isinstance(outcome, Trial):
        raise TypeError(
            "the trial callback must return a pytest_compress.tuning.trial.Trial, "
            f"got {type(outcome).__name__}"
        )
    return replace(outcome, setting=setting)


def describe_violation(check: BudgetCheck, metric: MetricKind | None = None) -> str:
    """A broken ``BudgetCheck`` in a few words: ``drop 2.9 pp > 2.0 pp``, ``ratio 0.31 > 0.30``."""
    metric = MetricKind() if metric is None else metric
    if check.budget == "baseline_size":
        return f"size {format_size(check.actual)} > {format_size(check.limit)}"
    if check.budget == "baseline_metric":
        shown = metric.value(check.actual)
        return f"metric {shown} {metric.worse} baseline limit {metric.value(check.limit)}"
    return check.describe(metric, short=True)
