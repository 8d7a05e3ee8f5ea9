"""``CompressionResult``: what one compression check measured, its verdict, and its text.

``explain()`` renders the message a failing test shows: the
recipe in words, then one line per measurement with its budget, each line either
ending in ``ok`` or stating both the value and the limit it broke.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..budgets import BUDGETS, INVARIANT_CHECK, NAN_CHECK, Budget, BudgetCheck, Budgets
from ..engine.specs import PruneSpec, QuantSpec
from ..metrics import DEFAULT_METRIC, MetricKind
from ..tuning.grids import format_setting
from ..units import distinct, format_fraction, format_ratio, format_size
from .deployed_text import deployed_lines

PRESET_WORDS = re.compile(r"left float by the (@\w+) preset")

if TYPE_CHECKING:  # they import torch; the plugin imports this module when it loads
    from ..runtimes.latency import LatencyMeasurement
    from ..tuning.keep_float import KeepFloatResult
    from ..tuning.recovery import RecoveryResult
    from ..tuning.search import SearchResult
    from ..tuning.sensitivity import SensitivityResult

# The budgets whose line in a failure message is the headline of its measurement
# (``accuracy 97.2% -> 92.2%: drop 5.0 pp > 0.5 pp allowed``, ``size ... (ratio ...)``).
_HEADLINE_BUDGETS = (
    "max_accuracy_drop",
    "max_size_ratio",
    "max_fidelity_gap",
    "max_latency_ratio",
    "max_latency",
)


@dataclass(frozen=True)
class CompressionResult:
    """One compression check: the float and compressed model measured side by side.

    ``accuracy_drop`` is float metric minus compressed metric, or the increase when
    lower is better (so a positive drop is always a loss); ``relative_drop`` divides it
    by ``|float_metric|``. Sizes are bytes: ``float_size`` of ``torch.save(state_dict)``,
    ``compressed_size`` of the file ``save_compressed`` writes. ``timings`` are seconds.
    ``cached`` says the numbers were read from the persistent cache, not measured now.
    """

    float_metric: float
    compressed_metric: float
    accuracy_drop: float
    relative_drop: float
    float_size: int
    compressed_size: int
    size_ratio: float
    sparsity: float
    recipe: str
    quantize: QuantSpec | None = None
    prune: PruneSpec | None = None
    budgets: Budgets = field(default_factory=Budgets)
    checks: tuple[BudgetCheck, ...] = ()
    timings: dict[str, float] = field(default_factory=dict)
    metric: str = DEFAULT_METRIC
    higher_is_better: bool = True
    model: str = "model"
    data: str = "data"
    device: str = "cpu"
    # True when the numbers come from the persistent cache (an earlier run measured the
    # same weights, data, metric and recipe); the budgets were checked on them anew.
    cached: bool = False
    # True when the check compressed the low-memory mode's shallow clone (packed weights,
    # dequantized as each layer runs) instead of a deep copy: the numbers are the same.
    low_memory: bool = False
    # Modules with a weight matrix that the recipe did not compress, and why (by name).
    skipped_layers: dict[str, str] = field(default_factory=dict)
    # How the recipe was adjusted from evaluation, when it was: the search that chose the
    # recipe, the layers kept float, the per-layer drops of a failing recipe, the recovery.
    search: SearchResult | None = None
    keep_float: KeepFloatResult | None = None
    sensitivity: SensitivityResult | None = None
    recovery: RecoveryResult | None = None
    # A deployed check (runtime= not "simulate"): compressed_metric and compressed_size are
    # the runtime's artifact's; the simulation of the same recipe measured beside it.
    runtime: str = "simulate"
    simulated_metric: float | None = None
    simulated_size: int | None = None
    saved_as: str = ""
    # The deployed model timed against the float one, when a latency budget asked.
    latency_measured: LatencyMeasurement | None = None
    # What the compressed model breaks of its recipe's claims (the recipe-invariant gate).
    broken_invariants: tuple[str, ...] = ()

    @property
    def fidelity_gap(self) -> float:
        """|deployed metric - simulated metric|; NaN for a simulated check."""
        if self.simulated_metric is None:
            return math.nan
        return abs(self.compressed_metric - self.simulated_metric)

    @property
    def latency_ratio(self) -> float:
        """Compressed time per batch / float time per batch (the median round); NaN untimed."""
        return math.nan if self.latency_measured is None else self.latency_measured.ratio

    @property
    def latency(self) -> float:
        """Seconds per batch of the deployed model (median); NaN untimed."""
        timed = self.latency_measured
        return math.nan if timed is None else timed.compressed_ms / 1000

    @property
    def violations(self) -> list[BudgetCheck]:
        """Every broken budget (and baseline regression), in message order."""
        return [check for check in self.checks if not check.ok]

    @property
    def passed(self) -> bool:
        return not self.violations

    @property
    def regressed(self) -> bool:
        """True when the stored baseline gate failed."""
        return any(check.is_baseline for check in self.violations)

    @property
    def seconds(self) -> float:
        return self.timings.get("total", 0.0)

    def judged(self) -> CompressionResult:
        """This result with its budgets checked: each against the field its registry entry
        names (``Budget.measures``)."""
        measured = {budget.measures: getattr(self, budget.measures) for budget in BUDGETS.values()}
        checks = [self._on_interval(check) for check in self.budgets.check(measured)]
        if math.isnan(self.compressed_metric):  # fails whatever the budgets: nothing to judge
            checks.append(BudgetCheck(NAN_CHECK, math.nan, math.nan, ok=False))
        if self.broken_invariants:  # fails whatever the budgets: the artifact is not the recipe
            count = len(self.broken_invariants)
            checks.append(BudgetCheck(INVARIANT_CHECK, count, 0, ok=False))
        return dataclasses.replace(self, checks=tuple(checks))

    def _on_interval(self, check: BudgetCheck) -> BudgetCheck:
        """A latency ratio is judged on its interval: it breaks when the whole interval lies
        above the budget, holds when the whole lies at or below it, and in between (the
        time cap reached) on the median; an absolute latency on its median."""
        timed = self.latency_measured
        if check.budget != "max_latency_ratio" or timed is None:
            return check
        verdict = timed.verdict(check.limit)
        ok = verdict == "pass" or (verdict == "noisy" and timed.ratio <= check.limit)
        return dataclasses.replace(check, ok=ok)

    @property
    def noisy(self) -> bool:
        """The latency interval straddles the ratio budget at the time cap: judged on the
        median, without the certainty a clear interval gives."""
        timed, limit = self.latency_measured, self.budgets.max_latency_ratio
        return timed is not None and limit is not None and timed.verdict(limit) == "noisy"

    def with_checks(self, extra: list[BudgetCheck]) -> CompressionResult:
        return dataclasses.replace(self, checks=(*self.checks, *extra))

    def explain(self) -> str:
        """The human text: verdict and recipe, then one line per measurement."""
        if any(not check.is_baseline for check in self.violations):
            head = "compression budget exceeded for"
        elif self.regressed:
            head = "compression regressed vs baseline for"
        elif self.budgets:
            head = "compression within budget for"
        else:
            head = "compression result for"
        lines = [f"{head} {self.recipe}:"]
        by_budget = {check.budget: check for check in self.checks}
        lines.append(self._metric_line(by_budget.get("max_accuracy_drop")))
        lines.extend(self._budget_lines(by_budget, eased_by_compression=False))
        if self.sensitivity is not None:  # the blame sits under the metric it explains
            lines.append(self.sensitivity.summary())
        lines.append(self._size_line(by_budget.get("max_size_ratio")))
        lines.extend(deployed_lines(self, by_budget))
        lines.extend(self._budget_lines(by_budget, eased_by_compression=True))
        if "min_sparsity" not in by_budget and self.prune is not None:
            lines.append(f"sparsity {format_fraction(self.sparsity)}")
        lines.extend(self._baseline_line(check) for check in self.checks if check.is_baseline)
        lines.extend(self._adjustment_lines())
        lines.extend(invariant_lines(self.broken_invariants))
        where = f"model {self.model}, data {self.data}, device {self.device}"
        if self.cached:
            where += " (measured by an earlier run: pytest-compress cache)"
        lines.append(where)
        return "\n  ".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe fields (specs as their dataclass fields), for reports and xdist."""
        return {
            "model": self.model,
            "data": self.data,
            "device": self.device,
            "recipe": self.recipe,
            "quantize": _spec_dict(self.quantize),
            "prune": _spec_dict(self.prune),
            "metric": self.metric,
            "higher_is_better": self.higher_is_better,
            "float_metric": self.float_metric,
            "compressed_metric": self.compressed_metric,
            "accuracy_drop": self.accuracy_drop,
            "relative_drop": self.relative_drop,
            "float_size": self.float_size,
            "compressed_size": self.compressed_size,
            "size_ratio": self.size_ratio,
            "sparsity": self.sparsity,
            "budgets": self.budgets.given(),
            "violations": [dataclasses.asdict(check) for check in self.violations],
            "passed": self.passed,
            "seconds": self.seconds,
            "timings": dict(self.timings),
            "cached": self.cached,
            "low_memory": self.low_memory,
            "skipped_layers": dict(self.skipped_layers),
            "broken_invariants": list(self.broken_invariants),
            "search": None if self.search is None else self.search.to_dict(),
            "keep_float": None if self.keep_float is None else self.keep_float.to_dict(),
            "sensitivity": None if self.sensitivity is None else self.sensitivity.to_dict(),
            "recovery": None if self.recovery is None else self.recovery.to_dict(),
            "runtime": self.runtime,
            "simulated_metric": self.simulated_metric,
            "simulated_size": self.simulated_size,
            "fidelity_gap": None if self.simulated_metric is None else self.fidelity_gap,
            "saved_as": self.saved_as,
            "latency": None if self.latency_measured is None else self._latency_dict(),
        }

    def _latency_dict(self) -> dict[str, Any]:
        timed = self.latency_measured
        assert timed is not None
        return {**dataclasses.asdict(timed), "noisy": self.noisy}

    # --- the lines of explain() -----------------------------------------------------

    @property
    def metric_kind(self) -> MetricKind:
        """How this check's metric reads (percent or not, drop or increase)."""
        return MetricKind.named(self.metric, self.higher_is_better)

    def _metric_line(self, check: BudgetCheck | None) -> str:
        before, after = distinct(
            self.float_metric,
            self.compressed_metric,
            self.metric_kind.value,
        )
        head = f"{self.metric} {before} -> {after}"
        if math.isnan(self.compressed_metric):
            return f"{head}: the compressed model produced NaN"
        if check is None:
            drop = self.metric_kind.difference(self.accuracy_drop)
            return f"{head} ({self.metric_kind.drop_word} {drop})"
        drop, limit = _shown(check, self.metric_kind.difference)
        if check.ok:
            return f"{head} ({self.metric_kind.drop_word} {drop}, budget {limit}): ok"
        return f"{head}: {self.metric_kind.drop_word} {drop} > {limit} allowed"

    def _size_line(self, check: BudgetCheck | None) -> str:
        before, after = format_size(self.float_size), format_size(self.compressed_size)
        head = f"size {before} -> {after}"
        if check is None:
            return f"{head} (ratio {format_ratio(self.size_ratio)})"
        ratio, limit = _shown(check, format_ratio)
        if check.ok:
            return f"{head} (ratio {ratio}, budget {limit}): ok"
        return f"{head}: ratio {ratio} > {limit} allowed"

    def _budget_lines(
        self, by_budget: dict[str, BudgetCheck], *, eased_by_compression: bool
    ) -> list[str]:
        """A line per budget set that no headline shows, in registry order."""
        lines = []
        metric = self.metric_kind
        for name, budget in BUDGETS.items():
            check = by_budget.get(name)
            if check is None or name in _HEADLINE_BUDGETS:
                continue
            if budget.eased_by_compression == eased_by_compression:
                lines.append(_budget_line(budget, check, metric))
        return lines

    def _baseline_search_line(self, check: BudgetCheck) -> str:
        kind = self.search.kind if self.search is not None else "setting"
        return _search_line(check, kind)

    def _adjustment_lines(self) -> list[str]:
        """The search (with its trail), the layers kept float, and recovery."""
        lines: list[str] = []
        by_preset = preset_floats(self.skipped_layers)
        if by_preset:
            lines.append(f"left float by presets: {', '.join(by_preset)}")
        if self.search is not None:
            lines.extend(self.search.explain().split("\n  "))
        if self.keep_float is not None:
            lines.append(self.keep_float.summary())
        if self.recovery is not None:
            lines.append(self.recovery.summary())
        return lines

    def _baseline_line(self, check: BudgetCheck) -> str:
        if check.budget == "baseline_search":
            return self._baseline_search_line(check)
        reference = check.reference if check.reference is not None else check.limit
        if check.budget == "baseline_latency":
            ratio, recorded = format_ratio(check.actual), format_ratio(reference)
            allowed = format_ratio(check.limit)
            if check.ok:
                return f"latency ratio {ratio} vs baseline {recorded} (up to {allowed}): ok"
            return (
                f"regressed vs baseline: latency ratio {ratio} (its whole interval) above "
                f"baseline {recorded} + tolerance ({allowed})"
            )
        if check.budget == "baseline_size":
            size, recorded = distinct(check.actual, reference, format_size)
            if check.ok:
                return f"compressed size {size} vs baseline {recorded} (+1% allowed): ok"
            return (
                f"regressed vs baseline: compressed size {size} > baseline {recorded} "
                f"+ 1% ({format_size(check.limit)})"
            )
        value, recorded = distinct(check.actual, reference, self.metric_kind.value)
        tolerance = self.metric_kind.difference(abs(reference - check.limit))
        if check.ok:
            return f"{self.metric} {value} vs baseline {recorded} (tolerance {tolerance}): ok"
        worse = self.metric_kind.worse
        return (
            f"regressed vs baseline: {self.metric} {value} {worse} baseline {recorded} "
            f"by more than the tolerance {tolerance}"
        )


def _budget_line(budget: Budget, check: BudgetCheck, metric: MetricKind) -> str:
    """``compressed size 7.7 kB (budget 10.0 kB): ok`` or ``sparsity 50.0% < 80.0% required``."""
    actual, limit = _shown(check, lambda v, d: budget.render(v, metric, d))
    if actual == limit and not check.ok:  # they differ below the shown precision: raw numbers
        actual, limit = f"{check.actual:,}", f"{check.limit:,}"
    head = f"{budget.words(budget.label, metric)} {actual}"
    if check.ok:
        return f"{head} (budget {limit}): ok"
    return f"{head} > {limit} allowed" if budget.upper else f"{head} < {limit} required"


def _shown(check: BudgetCheck, render: Callable[[float, int], str]) -> tuple[str, str]:
    """The value and the limit of ``check``: at the usual precision when the budget holds
    (``sparsity 30.0% (budget 30.0%): ok``: nothing to tell apart), else with the digits
    that tell them apart (a broken budget never reads ``2.0 pp > 2.0 pp allowed``)."""
    if check.ok:
        return render(check.actual, 0), render(check.limit, 0)
    return distinct(check.actual, check.limit, render)


def _search_line(check: BudgetCheck, kind: str) -> str:
    found = None if check.actual != check.actual else check.actual  # NaN: nothing found
    found_text = format_setting(kind, found) if found is not None else "nothing"
    recorded = format_setting(kind, check.reference)
    if check.ok:
        return f"searched {kind} {found_text} vs baseline {recorded}: ok"
    return (
        f"regressed vs baseline: searched {kind} {found_text} is less compression than the "
        f"recorded {recorded} (beyond the tolerance)"
    )


INVARIANTS_SHOWN = 5


def invariant_lines(broken: tuple[str, ...]) -> list[str]:
    """``recipe not held: fc1: channel 3 holds 300 distinct values; 4 bits allow 16 ...``."""
    lines = [f"recipe not held: {text}" for text in broken[:INVARIANTS_SHOWN]]
    if len(broken) > INVARIANTS_SHOWN:
        lines.append(f"recipe not held: ... and {len(broken) - INVARIANTS_SHOWN} more layers")
    return lines


def preset_floats(skipped_layers: dict[str, str]) -> dict[str, str]:
    """The layers a preset (``@embeddings``, ``@head``) left float, with the preset."""
    found = {name: PRESET_WORDS.match(why) for name, why in skipped_layers.items()}
    return {name: match[1] for name, match in found.items() if match}


def _spec_dict(spec: Any) -> dict[str, Any] | None:
    if spec is None:
        return None
    return {
        key: list(value) if isinstance(value, tuple) else value
        for key, value in dataclasses.asdict(spec).items()
    }
