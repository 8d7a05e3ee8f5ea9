"""Search: the most compression at which every budget of a check still holds.

``search(kind, trial, quantize=..., prune=...)`` bisects one knob of the recipe while the
rest stays fixed. ``trial(quantize_spec, prune_spec) -> Trial`` is the caller's: it
compresses, evaluates and applies the budgets. The knobs, each a grid ordered from
least to most compression:

- ``"sparsity"``: global magnitude pruning, ``PruneSpec(amount=a, scope="global")``,
  ``a`` in 0.01, 0.02, ..., 0.99 (99 settings: at most 7 evaluations).
- ``"threshold"``: magnitude threshold pruning's per-layer rule ``|w| < alpha * max|w|``,
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

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any, TypedDict

from ..engine.specs import PruneSpec, QuantSpec, describe_recipe
from ..metrics import MetricKind
from ..tables import text_table
from ..units import format_size
from .grids import GRIDS, MAX_EVALUATIONS, check_kind, check_search, format_setting, setting_phrase
from .trial import Trial, checked_trial

TrialFn = Callable[[QuantSpec | None, PruneSpec | None], Trial]


class _Way(TypedDict, total=False):
    """The searched way of choosing weights: one of ``PruneSpec``'s amount or threshold."""

    amount: float
    threshold: float


def recipe_at(
    kind: str,
    setting: float | int,
    *,
    quantize: QuantSpec | None = None,
    prune: PruneSpec | None = None,
    exclude: Sequence[str] = (),
) -> tuple[QuantSpec | None, PruneSpec | None]:
    """The (quantize, prune) specs that ``search`` tries at ``setting``.

    The fixed part is kept as it is; the searched spec gets ``exclude`` (for example the
    layers kept float). For ``"bits"`` a given ``quantize`` is the template whose bits are
    searched (``"int4-g128-gptq"`` searches the bits of group-wise GPTQ). A fixed
    activation-only ``PruneSpec`` is extended with the searched weight pruning, its
    include/exclude patterns applying to both.
    """
    kind = check_kind(kind)
    quant_spec, prune_spec, patterns = quantize, prune, tuple(exclude)
    if kind == "bits":
        if quant_spec is None:
            return QuantSpec(bits=int(setting), exclude=patterns), prune_spec
        # the given quantize is the template: its group size, rounding method, scale
        # dtype and activation bits stay, the weight bits are what is searched
        template = replace(quant_spec, exclude=(*quant_spec.exclude, *patterns))
        return replace(template, bits=int(setting)), prune_spec
    way: _Way = {"amount": setting} if kind == "sparsity" else {"threshold": setting}
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
    quantize: QuantSpec | None = None,
    prune: PruneSpec | None = None,
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
    quant_spec, prune_spec, patterns = quantize, prune, tuple(exclude)
    grid = GRIDS[kind]
    trail: list[Trial] = []

    def evaluate(index: int) -> Trial:
        setting = grid[index]
        q, p = recipe_at(kind, setting, quantize=quant_spec, prune=prune_spec, exclude=patterns)
        outcome = checked_trial(trial(q, p), setting)
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

    def with_closest(self, trial: Trial) -> SearchResult:
        """The same search with ``trial`` (the closest re-read, say once its size was
        counted) in place of ``closest``, in the trail too."""
        trail = tuple(trial if step is self.closest else step for step in self.trail)
        return replace(self, trail=trail, closest=trial)

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
        shown = setting_phrase(self.kind, self.closest.setting)
        if self.closest.damaged:
            return f"even {shown}, the least compression searched, breaks: {self.closest.verdict()}"
        return (
            f"{shown} is the most compression within the metric budgets and still breaks: "
            f"{self.closest.verdict()}"
        )

    def trail_table(self) -> str:
        """One row per evaluation, in order: setting, metric, size, verdict."""
        metric = MetricKind.named(self.metric_name)
        rows = []
        for number, step in enumerate(self.trail, start=1):
            verdict = step.verdict()
            if self.passed and step is self.closest:
                verdict += " (chosen)"
            setting = format_setting(self.kind, step.setting)
            rows.append(
                (
                    str(number),
                    setting,
                    metric.value(step.metric),
                    "not counted" if step.size is None else format_size(step.size),
                    verdict,
                )
            )
        header = ("#", self.kind, self.metric_name, "size", "verdict")
        return "\n".join(text_table(header, rows))

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
