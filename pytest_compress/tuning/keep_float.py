"""Mixed precision: keep some layers float (uncompressed) so the rest of the recipe fits.

``keep_float`` is either a list of module-name patterns (fnmatch, as ``include`` /
``exclude``), added to the ``exclude`` of both the quantize and the prune spec, or
``"auto"``: ``keep_float_auto`` keeps the most sensitive layers float one at a time, in
the order ``layer_sensitivity`` ranked them, until the caller's trial reports every
budget held.

Rules of ``"auto"``:

- it starts from the full recipe's trial (the failing check's, when the caller has
  it: no evaluation spent); if that passes, nothing is kept float;
- each further layer costs one evaluation;
- it stops, failing, as soon as a size or sparsity budget breaks: keeping more layers
  float can only make the model bigger and less sparse, so no later step could pass;
- it never keeps every compressed layer float (that is no longer compression), and
  a spec left with no layer to compress is dropped from the recipe.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from torch import nn

from ..engine.layers import compressible_layers
from ..engine.specs import (
    PruneSpec,
    QuantSpec,
    describe_recipe,
)
from ..errors import SpecError
from ..units import format_size
from .sensitivity import literal_pattern, touched_layers
from .trial import FLOOR_BUDGETS, Trial, checked_trial

TrialFn = Callable[[QuantSpec | None, PruneSpec | None], Trial]


def require_matches(model: nn.Module, patterns: Sequence[str]) -> None:
    """``SpecError`` naming every ``keep_float`` pattern that matches no compressible layer:
    a misspelt name would otherwise keep nothing float, in silence."""
    names = [layer.name for layer in compressible_layers(model)]
    unmatched = [p for p in patterns if not any(fnmatch.fnmatchcase(n, p) for n in names)]
    if unmatched:
        raise SpecError(
            f"keep_float patterns {unmatched} match no compressible layer; the model's "
            f"compressible layers are {names}"
        )


def keep_float_specs(
    quantize: QuantSpec | None,
    prune: PruneSpec | None,
    patterns: Sequence[str],
    *,
    model: nn.Module | None = None,
) -> tuple[QuantSpec | None, PruneSpec | None]:
    """The recipe with ``patterns`` added to the ``exclude`` of both specs.

    With ``model``, a spec that would then select no compressible layer is dropped
    (None), and keeping every layer float is a ``ValueError``: nothing would be compressed.
    """
    kept = tuple(patterns)
    quant_spec, prune_spec = quantize, prune
    if quant_spec is not None:
        quant_spec = replace(quant_spec, exclude=(*quant_spec.exclude, *kept))
    if prune_spec is not None:
        prune_spec = replace(prune_spec, exclude=(*prune_spec.exclude, *kept))
    if model is None:
        return quant_spec, prune_spec
    if quant_spec is not None and not touched_layers(model, quant_spec, None):
        quant_spec = None
    if prune_spec is not None and not touched_layers(model, None, prune_spec):
        prune_spec = None
    if quant_spec is None and prune_spec is None:
        raise SpecError(
            f"keep_float={list(kept)} keeps every compressed layer float: nothing is left "
            "to compress"
        )
    return quant_spec, prune_spec


def _check_ranking(
    model: nn.Module,
    names: tuple[Any, ...],
    ranking: object,
    max_layers: object,
    quantize: QuantSpec | None,
    prune: PruneSpec | None,
) -> set[str]:
    """The names of the layers the recipe compresses; ``ValueError`` for a bad ranking or cap."""
    if any(not isinstance(name, str) for name in names):
        raise SpecError(f"ranking must be a SensitivityResult or layer names, got {ranking!r}")
    if max_layers is not None and (
        isinstance(max_layers, bool) or not isinstance(max_layers, int) or max_layers < 1
    ):
        raise SpecError(f"max_layers must be an int >= 1 or None, got {max_layers!r}")
    compressed = {layer.name for layer in touched_layers(model, quantize, prune)}
    unknown = [name for name in names if name not in compressed]
    if unknown:
        raise SpecError(
            f"ranking names layers the recipe does not compress: {unknown}; "
            f"compressed layers are {sorted(compressed)}"
        )
    return compressed


def keep_float_auto(
    model: nn.Module,
    ranking: Sequence[str] | Any,
    trial: TrialFn,
    *,
    quantize: QuantSpec | None = None,
    prune: PruneSpec | None = None,
    initial: Trial | None = None,
    max_layers: int | None = None,
    metric_name: str = "accuracy",
) -> KeepFloatResult:
    """Keep layers float in ``ranking`` order (most sensitive first) until every budget holds.

    ``ranking`` is a ``SensitivityResult`` (its ``ranked`` names) or layer names.
    ``initial`` is the full recipe's trial when the caller has it; otherwise it is
    evaluated first. At most ``max_layers`` layers are kept (None: no cap but the
    ranking's length).
    """
    names = tuple(getattr(ranking, "ranked", ranking))
    quant_spec, prune_spec = quantize, prune
    compressed = _check_ranking(model, names, ranking, max_layers, quant_spec, prune_spec)

    def run(q: QuantSpec | None, p: PruneSpec | None, setting: Any) -> Trial:
        return checked_trial(trial(q, p), setting)

    trail: list[Trial] = []
    if initial is None:
        initial = run(quant_spec, prune_spec, ())
        trail.append(initial)
    kept: list[str] = []
    final_specs = (quant_spec, prune_spec)
    current = initial
    candidates = names if max_layers is None else names[:max_layers]
    for name in candidates:
        if current.passed or any(b in FLOOR_BUDGETS for b in current.broken):
            break
        if len(kept) + 1 >= len(compressed):
            break  # keeping every compressed layer float is no compression at all
        kept.append(name)
        final_specs = keep_float_specs(
            quant_spec, prune_spec, [literal_pattern(n) for n in kept], model=model
        )
        current = run(*final_specs, name)
        trail.append(current)
    if not kept:
        final_specs = (quant_spec, prune_spec)
    return KeepFloatResult(
        kept=tuple(kept),
        trail=tuple(trail),
        initial=initial,
        quantize=final_specs[0],
        prune=final_specs[1],
        metric_name=metric_name,
    )


@dataclass(frozen=True)
class KeepFloatResult:
    """The layers kept float (in the order added), every trial made, and the final recipe.

    ``trail`` holds the evaluations this search made (the initial one only when it had
    to evaluate it), each ``setting`` the layer added; ``size_cost`` is the final
    compressed size minus the full recipe's, in bytes.
    """

    kept: tuple[str, ...]
    trail: tuple[Trial, ...]
    initial: Trial
    quantize: QuantSpec | None
    prune: PruneSpec | None
    metric_name: str = "accuracy"

    @property
    def final(self) -> Trial:
        return self.trail[-1] if self.trail else self.initial

    @property
    def passed(self) -> bool:
        return self.final.passed

    @property
    def evaluations(self) -> int:
        return len(self.trail)

    @property
    def size_cost(self) -> int:
        return self.final.size - self.initial.size

    @property
    def recipe(self) -> str:
        return describe_recipe(self.quantize, self.prune)

    def summary(self) -> str:
        """``kept float: fc1, conv2 (+12.3 kB)``, or why that was not enough."""
        if not self.kept:
            if self.passed:
                return "kept float: none needed"
            return f"kept float: none (no layer could be kept float: {self.final.verdict()})"
        names = ", ".join(self.kept)
        sign = "+" if self.size_cost >= 0 else "-"
        cost = f"{sign}{format_size(abs(self.size_cost))}"
        if self.passed:
            return f"kept float: {names} ({cost})"
        return f"kept float: {names} ({cost}), still breaks: {self.final.verdict()}"

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe fields for the reports."""
        return {
            "kept_float": list(self.kept),
            "passed": self.passed,
            "size_cost": self.size_cost,
            "evaluations": self.evaluations,
            "recipe": self.recipe,
        }
