"""Search: the most compression at which every budget of a check still holds.

``search(kind, trial, quantize=..., prune=...)`` bisects one knob of the recipe while the
rest stays fixed. ``trial(quantize_spec, prune_spec) -> Trial`` is the caller's: it
compresses, evaluates and applies the budgets. The knobs, each a grid ordered from
least to most compression:

- ``"sparsity"``: global magnitude pruning, ``PruneSpec(amount=a, scope="global")``,
  ``a`` in 0.01, 0.02, ..., 0.99 (99 settings: at most 7 evaluations).
- ``"threshold"``: the seed article's per-layer rule ``|w| < alpha * max|w|``,
  ``PruneSpec(threshold=alpha)``, alpha on a log scale from 1e-4 to 1 with 63 steps per
  decade (253 settings, neighbours a factor ``10**(1/63)`` = 1.037 apart, i.e. a
  resolution of 3.7 % of alpha; each rounded to 3 significant digits so reports and
  baselines read ``0.0123``): at most 8 evaluations.
- ``"bits"``: weight bits 8, 7, ..., 2 of ``QuantSpec(bits=b)`` (per-channel, affine):
  at most 3 evaluations.

The rule: assume more compression never helps the metric and never hurts the size, so
the settings whose *damage* budgets (the metric's) hold form a prefix of the grid, and
the settings whose *floor* budgets (size, sparsity) hold form a suffix (see
``trial.py``). Bisection finds the last setting of that prefix in ``ceil(log2(N + 1))``
evaluations; it passes when it also meets the floors, and when it does not, no setting
does. The chosen setting is always one that was evaluated and passed, and when it is
not the last of the grid the trail also holds the next setting, evaluated and broken:
the trail itself shows the boundary to the grid's resolution.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from ..budgets import Budgets
from ..engine.specs import (
    PruneSpec,
    QuantSpec,
    _patterns,
    as_prune_spec,
    as_quant_spec,
    describe_recipe,
)
from ..units import format_metric, format_size
from .trial import DAMAGE_BUDGETS, Trial

SEARCH_KINDS = ("sparsity", "threshold", "bits")
MAX_EVALUATIONS = 8
THRESHOLD_STEPS_PER_DECADE = 63
THRESHOLD_MIN, THRESHOLD_MAX = 1e-4, 1.0

# Each grid runs from the least to the most compression.
SPARSITY_GRID: tuple[float, ...] = tuple(k / 100 for k in range(1, 100))
THRESHOLD_GRID: tuple[float, ...] = tuple(
    float(f"{10 ** (-4 + i / THRESHOLD_STEPS_PER_DECADE):.3g}")
    for i in range(4 * THRESHOLD_STEPS_PER_DECADE + 1)
)
BITS_GRID: tuple[int, ...] = (8, 7, 6, 5, 4, 3, 2)
GRIDS: dict[str, tuple[float, ...] | tuple[int, ...]] = {
    "sparsity": SPARSITY_GRID,
    "threshold": THRESHOLD_GRID,
    "bits": BITS_GRID,
}
# How far (in grid steps) a later run may fall short of a recorded search result before
# the baseline gate calls it a regression: one step absorbs float noise across machines
# for the fine grids; a bit width is never noise.
DEFAULT_TOLERANCE_STEPS = {"sparsity": 1, "threshold": 1, "bits": 0}

TrialFn = Callable[[QuantSpec | None, PruneSpec | None], Trial]


def max_evaluations(kind: str) -> int:
    """The most evaluations ``search(kind, ...)`` makes: ``ceil(log2(len(grid) + 1))``."""
    return math.ceil(math.log2(len(GRIDS[check_kind(kind)]) + 1))


def check_kind(search: object) -> str:
    """``search`` itself when it names a search kind; ``ValueError`` naming the valid ones."""
    if not isinstance(search, str) or search not in SEARCH_KINDS:
        valid = ", ".join(repr(kind) for kind in SEARCH_KINDS)
        raise ValueError(f"search must be one of {valid}; got {search!r}")
    return search


def check_search(
    search: object,
    *,
    quantize: QuantSpec | str | None = None,
    prune: PruneSpec | float | str | None = None,
    budgets: Budgets | Mapping[str, Any] | Iterable[str] | None = None,
) -> str:
    """Validate a search request as the marker will (at collection); return the kind.

    Refused, each with a ``ValueError`` naming the argument and the valid forms:

    - an unknown kind;
    - a fixed part that the search would overwrite: ``search="sparsity"`` or
      ``"threshold"`` with a ``prune`` that prunes weights (an activation-only
      ``PruneSpec(activation_threshold=...)`` may stay), ``search="bits"`` with any
      ``quantize``;
    - when ``budgets`` is given (a ``Budgets``, a mapping of budget names to values, or
      budget names): no budget that more compression can break (``max_accuracy_drop``
      or ``max_relative_drop``). Size and sparsity budgets alone only push towards more
      compression, so the search would always answer the end of its grid.
    """
    kind = check_kind(search)
    quant_spec = as_quant_spec(quantize)
    prune_spec = as_prune_spec(prune)
    if kind in ("sparsity", "threshold") and prune_spec is not None and prune_spec.prunes_weights:
        raise ValueError(
            f"prune={prune_spec.describe()!r} conflicts with search={kind!r}, which chooses "
            "the weight pruning itself; drop prune= (an activation-only "
            "PruneSpec(activation_threshold=...) may stay) or drop search="
        )
    if kind == "bits" and quant_spec is not None:
        raise ValueError(
            f"quantize={quant_spec.describe()!r} conflicts with search='bits', which chooses "
            "the weight bits itself (8 down to 2); drop quantize= or drop search="
        )
    if budgets is not None:
        names = _budget_names(budgets)
        if not any(name in DAMAGE_BUDGETS for name in names):
            got = f"only {', '.join(names)}" if names else "no budget"
            raise ValueError(
                f"search={kind!r} needs a budget that more compression can break: "
                f"{' or '.join(DAMAGE_BUDGETS)}; got {got}"
            )
    return kind


def _budget_names(budgets: Budgets | Mapping[str, Any] | Iterable[str]) -> list[str]:
    if isinstance(budgets, Budgets):
        return list(budgets.given())
    if isinstance(budgets, Mapping):
        return [name for name, value in budgets.items() if value is not None]
    return list(budgets)


def recipe_at(
    kind: str,
    setting: float | int,
    *,
    quantize: QuantSpec | str | None = None,
    prune: PruneSpec | float | str | None = None,
    exclude: Sequence[str] = (),
) -> tuple[QuantSpec | None, PruneSpec | None]:
    """The (quantize, prune) specs that ``search`` tries at ``setting``.

    The fixed part is kept as it is; the searched spec gets ``exclude`` (for example the
    layers kept float). A fixed activation-only ``PruneSpec`` is extended with the
    searched weight pruning, its include/exclude patterns applying to both.
    """
    kind = check_kind(kind)
    quant_spec = as_quant_spec(quantize)
    prune_spec = as_prune_spec(prune)
    patterns = _patterns(exclude, "exclude")
    if kind == "bits":
        return QuantSpec(bits=int(setting), exclude=patterns), prune_spec
    way = {"amount": setting} if kind == "sparsity" else {"threshold": setting}
    scope = "global" if kind == "sparsity" else "layer"
    if prune_spec is None:
        searched = PruneSpec(**way, scope=scope, exclude=patterns)
    else:
        searched = replace(
            prune_spec,
            **way,
            scope=scope,
            structure="unstructured",
            exclude=(*prune_spec.exclude, *patterns),
        )
    return quant_spec, searched


def search(
    kind: str,
    trial: TrialFn,
    *,
    quantize: QuantSpec | str | None = None,
    prune: PruneSpec | float | str | None = None,
    exclude: Sequence[str] = (),
    metric_name: str = "accuracy",
) -> SearchResult:
    """The most compression of one knob (``kind``) at which ``trial`` reports every budget held.

    ``quantize`` / ``prune`` are the fixed part of the recipe (e.g. ``quantize="int8"``
    while searching sparsity); ``exclude`` patterns are added to the searched spec.
    ``metric_name`` only shapes the text (``"accuracy"`` renders in percent). At most
    ``max_evaluations(kind)`` calls of ``trial`` (never more than ``MAX_EVALUATIONS``).
    """
    kind = check_search(kind, quantize=quantize, prune=prune)
    quant_spec = as_quant_spec(quantize)
    prune_spec = as_prune_spec(prune)
    patterns = _patterns(exclude, "exclude")
    grid = GRIDS[kind]
    trail: list[Trial] = []

    def evaluate(index: int) -> Trial:
        setting = grid[index]
        q, p = recipe_at(kind, setting, quantize=quant_spec, prune=prune_spec, exclude=patterns)
        outcome = trial(q, p)
        if not isinstance(outcome, Trial):
            raise TypeError(
                f"the trial callback must return a pytest_compress.tuning.trial.Trial, "
                f"got {type(outcome).__name__}"
            )
        outcome = replace(outcome, setting=setting)
        trail.append(outcome)
        return outcome

    # Invariant: every index <= low is within the damage budgets (low = -1: none known),
    # every index >= high breaks them (high = len(grid): none known). Only evaluated
    # indices ever become low or high, so the answer is always an evaluated setting.
    low, high = -1, len(grid)
    outcomes: dict[int, Trial] = {}
    while high - low > 1:
        middle = (low + high) // 2
        outcomes[middle] = evaluate(middle)
        if outcomes[middle].damaged:
            high = middle
        else:
            low = middle
    best = outcomes.get(low)
    chosen = best.setting if best is not None and best.passed else None
    closest = best if best is not None else outcomes.get(high)
    assert len(trail) <= MAX_EVALUATIONS
    q, p = (quant_spec, prune_spec)
    if closest is not None:
        q, p = recipe_at(
            kind, closest.setting, quantize=quant_spec, prune=prune_spec, exclude=patterns
        )
    return SearchResult(
        kind=kind,
        trail=tuple(trail),
        chosen=chosen,
        closest=closest,
        quantize=q,
        prune=p,
        metric_name=metric_name,
    )


@dataclass(frozen=True)
class SearchResult:
    """What a search tried, in order, and what it chose.

    - ``trail``: every evaluated ``Trial`` (its ``setting`` filled in), in order.
    - ``chosen``: the setting with the most compression that passed, or None.
    - ``closest``: the chosen trial; when nothing passed, the trial that came closest
      (the least compression tried, or the most compression within the metric budgets
      when only size or sparsity failed). Its ``result`` is what a check reports.
    - ``quantize`` / ``prune``: the full recipe of ``closest``.
    """

    kind: str
    trail: tuple[Trial, ...]
    chosen: float | int | None
    closest: Trial | None = None
    quantize: QuantSpec | None = None
    prune: PruneSpec | None = None
    metric_name: str = "accuracy"

    @property
    def evaluations(self) -> int:
        return len(self.trail)

    @property
    def passed(self) -> bool:
        return self.chosen is not None

    @property
    def chosen_trial(self) -> Trial | None:
        return self.closest if self.passed else None

    @property
    def recipe(self) -> str:
        """The recipe of the chosen (or closest) setting in words."""
        return describe_recipe(self.quantize, self.prune)

    def summary(self) -> str:
        """``searched sparsity: 0.83 in 7 evaluations``, or that no setting passed."""
        count = f"{self.evaluations} evaluation{'s' if self.evaluations != 1 else ''}"
        if self.chosen is None:
            return f"searched {self.kind}: no setting passes ({count})"
        return f"searched {self.kind}: {format_setting(self.kind, self.chosen)} in {count}"

    def reason(self) -> str:
        """Why nothing passed (empty when something did)."""
        if self.passed or self.closest is None:
            return ""
        shown = _phrase(self.kind, self.closest.setting)
        if self.closest.damaged:
            return f"even {shown}, the least compression searched, breaks: {self.closest.verdict()}"
        return (
            f"{shown} is the most compression within the metric budgets and still breaks: "
            f"{self.closest.verdict()}"
        )

    def trail_table(self) -> str:
        """One row per evaluation, in order: setting, metric, size, verdict."""
        percent = self.metric_name == "accuracy"
        header = ("#", self.kind, self.metric_name, "size", "verdict")
        rows = [header]
        for number, step in enumerate(self.trail, start=1):
            verdict = step.verdict()
            if self.passed and step is self.closest:
                verdict += " (chosen)"
            rows.append(
                (
                    str(number),
                    format_setting(self.kind, step.setting),
                    format_metric(step.metric, percent),
                    format_size(step.size),
                    verdict,
                )
            )
        widths = [max(len(row[i]) for row in rows) for i in range(len(header) - 1)]
        return "\n".join(
            "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=False))
            + "  "
            + row[-1]
            for row in rows
        )

    def explain(self) -> str:
        """The summary, the reason when nothing passed, and the trail table."""
        lines = [self.summary()]
        if not self.passed:
            lines.append(self.reason())
        lines.extend(self.trail_table().splitlines())
        return "\n  ".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe fields for the reports and the stored baseline."""
        return {
            "search": self.kind,
            "chosen": self.chosen,
            "evaluations": self.evaluations,
            "passed": self.passed,
            "recipe": self.recipe,
            "trail": [
                {
                    "setting": step.setting,
                    "metric": step.metric,
                    "size": step.size,
                    "passed": step.passed,
                    "broken": list(step.broken),
                    "violations": list(step.violations),
                }
                for step in self.trail
            ],
        }


def format_setting(kind: str, setting: float | int | None) -> str:
    """A searched setting as reports show it: ``0.83``, ``0.0123``, ``4``."""
    if setting is None:
        return "-"
    if kind == "sparsity":
        return f"{setting:.2f}"
    if kind == "threshold":
        return f"{setting:.3g}"
    return str(setting)


def _phrase(kind: str, setting: float | int) -> str:
    if kind == "bits":
        return f"{setting} bits"
    if kind == "threshold":
        return f"alpha {format_setting(kind, setting)}"
    return f"sparsity {format_setting(kind, setting)}"


def grid_position(kind: str, setting: float | int) -> int:
    """The index of the grid setting nearest ``setting`` (higher = more compression)."""
    grid = GRIDS[check_kind(kind)]
    if kind == "threshold":
        if setting <= 0:
            return 0
        return min(range(len(grid)), key=lambda i: abs(math.log(grid[i] / setting)))
    return min(range(len(grid)), key=lambda i: abs(grid[i] - setting))


def less_compression(
    kind: str,
    found: float | int | None,
    recorded: float | int | None,
    *,
    tolerance_steps: int | None = None,
) -> bool:
    """Whether a search found less compression than a recorded one, beyond the tolerance.

    The tolerance is in grid steps (default ``DEFAULT_TOLERANCE_STEPS``: one step of
    sparsity or alpha, no bit). Nothing found against a recorded setting is less;
    nothing recorded is never beaten.
    """
    kind = check_kind(kind)
    steps = DEFAULT_TOLERANCE_STEPS[kind] if tolerance_steps is None else tolerance_steps
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise ValueError(f"tolerance_steps must be an int >= 0, got {tolerance_steps!r}")
    if recorded is None:
        return False
    if found is None:
        return True
    return grid_position(kind, found) < grid_position(kind, recorded) - steps
