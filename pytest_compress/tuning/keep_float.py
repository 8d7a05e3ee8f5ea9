"""Mixed precision: keep some layers float (uncompressed) so the rest of the recipe fits.

``keep_float`` is either a list of module-name patterns (fnmatch, as ``include`` /
``exclude``), added to the ``exclude`` of both the quantize and the prune spec, or
``"auto"``: ``keep_float_auto`` keeps layers float in the order of a ranking until the
caller's trial reports every budget held. ``per_byte_ranking`` makes that ranking over
every layer the recipe compresses: by the drop each layer recovers per byte it costs
kept float (see ``per_byte_ranking``).

Rules of ``"auto"``:

- it starts from the full recipe's trial (the failing check's, when the caller has
  it: no evaluation spent); if that passes, nothing is kept float;
- each further layer costs one evaluation;
- it stops, failing, as soon as a size or sparsity budget breaks: keeping more layers
  float can only make the model bigger and less sparse, so no later step could pass;
- it never keeps every compressed layer float (that is no longer compression), and
  a spec left with no layer to compress is dropped from the recipe;
- the first ``SINGLE_STEPS`` layers are added one per step; later steps add half as
  many layers again as are kept already, so a ranking of n layers costs O(log n)
  evaluations, not n (at the price of keeping a few layers more than the least needed).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from torch import nn

from ..engine.apply import compress_model
from ..engine.layers import compressible_layers, literal_pattern, selector
from ..engine.specs import (
    PruneSpec,
    QuantSpec,
    describe_recipe,
)
from ..errors import SpecError
from ..fileformat.container import stored_sizes
from ..units import format_size
from .proxy import output_errors
from .sensitivity import touched_layers
from .trial import FLOOR_BUDGETS, Trial, checked_trial

TrialFn = Callable[[QuantSpec | None, PruneSpec | None], Trial]
SINGLE_STEPS = 4
RANKING_SHOWN = 20  # candidates the reports list: the ones taken and those next in line


@dataclass(frozen=True)
class KeepFloatCandidate:
    """One layer's case for being kept float.

    ``cost``: bytes the compressed file grows by when the layer stays float; ``drop``: the
    metric drop it causes compressed alone, when measured (None otherwise); ``proxy``: its
    relative output error compressed (``tuning.proxy``); ``estimated_drop``: ``drop``, or
    for an unmeasured layer the proxy scaled to the measured drops.
    """

    layer: str
    cost: int
    proxy: float
    drop: float | None
    estimated_drop: float

    @property
    def recovered_per_byte(self) -> float:
        return max(self.estimated_drop, 0.0) / max(self.cost, 1)


def per_byte_ranking(
    costs: dict[str, int],
    proxies: dict[str, float],
    drops: dict[str, float],
) -> tuple[KeepFloatCandidate, ...]:
    """Every layer in ``costs``, best first: most drop recovered per byte kept float.

    A layer's drop is its measured one (``drops``, from ``layer_sensitivity``), or its
    proxy error times the median ratio of drop to proxy over the measured layers that
    hurt. Layers that recover nothing measurable come last, by proxy error per byte: the
    drop may come from layers together, which the proxy still orders.
    """
    ratios = sorted(
        drops[name] / proxies[name]
        for name in drops
        if drops[name] > 0 and proxies.get(name, 0.0) > 0
    )
    scale = ratios[len(ratios) // 2] if ratios else 0.0
    candidates = [
        KeepFloatCandidate(
            layer=name,
            cost=cost,
            proxy=proxies.get(name, 0.0),
            drop=drops.get(name),
            estimated_drop=drops[name] if name in drops else scale * proxies.get(name, 0.0),
        )
        for name, cost in costs.items()
    ]
    return tuple(
        sorted(
            candidates,
            key=lambda c: (-c.recovered_per_byte, -c.proxy / max(c.cost, 1), c.layer),
        )
    )


def require_matches(model: nn.Module, patterns: Sequence[str]) -> None:
    """``SpecError`` naming every ``keep_float`` pattern that matches no compressible layer:
    a misspelt name would otherwise keep nothing float, in silence."""
    names = [layer.name for layer in compressible_layers(model)]
    unmatched = [p for p in patterns if not any(map(selector(model, (p,), ()), names))]
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


def rank_layers_per_byte(
    model: nn.Module,
    quantize: QuantSpec | None,
    prune: PruneSpec | None,
    batches: Iterable[Any],
    *,
    sensitivity: Any = None,
    calibration_data: Iterable[Any] | None = None,
) -> tuple[KeepFloatCandidate, ...]:
    """``per_byte_ranking`` of every layer the recipe compresses in ``model``.

    Costs are measured on the file format (each weight's stored bytes float minus
    compressed), proxies on a few of ``batches``; ``sensitivity`` (a
    ``SensitivityResult``) gives the measured drops, and the proxies too when it ranked
    every layer by them (then no forward pass runs here). One compressed copy and at
    most one short forward pass, whatever the number of layers; ``model`` is never
    modified.
    """
    layers = touched_layers(model, quantize, prune)
    compressed = compress_model(
        model, quantize=quantize, prune=prune, calibration_data=calibration_data
    )
    proxies = {entry.layer: entry.error for entry in getattr(sensitivity, "proxied", ())}
    if set(proxies) != {layer.name for layer in layers}:
        proxies = output_errors(model, compressed, layers, batches)
    float_sizes, compressed_sizes = stored_sizes(model), stored_sizes(compressed)
    costs = {
        layer.name: float_sizes[layer.weight_name] - compressed_sizes[layer.weight_name]
        for layer in layers
    }
    drops = {entry.layer: entry.drop for entry in getattr(sensitivity, "layers", ())}
    return per_byte_ranking(costs, proxies, drops)


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

    ``ranking`` is a ``SensitivityResult`` (its ``ranked`` names), ``KeepFloatCandidate``
    entries (``per_byte_ranking``) or layer names.
    ``initial`` is the full recipe's trial when the caller has it; otherwise it is
    evaluated first. At most ``max_layers`` layers are kept (None: no cap but the
    ranking's length).
    """
    entries = tuple(getattr(ranking, "ranked", ranking))
    names = tuple(e.layer if isinstance(e, KeepFloatCandidate) else e for e in entries)
    compressed = _check_ranking(model, names, ranking, max_layers, quantize, prune)

    def run(kept: Sequence[str], setting: Any) -> tuple[Trial, tuple]:
        specs = (quantize, prune)
        if kept:
            specs = keep_float_specs(*specs, [literal_pattern(n) for n in kept], model=model)
        return checked_trial(trial(*specs), setting), specs

    trail: list[Trial] = []
    if initial is None:
        initial = run((), ())[0]
        trail.append(initial)
    kept: list[str] = []
    final_specs: tuple = (quantize, prune)
    current = initial
    candidates = list(names if max_layers is None else names[:max_layers])
    # keeping every compressed layer float is no compression at all: one stays compressed
    while candidates and len(kept) + 1 < len(compressed):
        if current.passed or any(b in FLOOR_BUDGETS for b in current.broken):
            break
        room = min(len(candidates), len(compressed) - 1 - len(kept))
        step = min(room, 1 if len(kept) < SINGLE_STEPS else len(kept) // 2)
        added, candidates = candidates[:step], candidates[step:]
        kept.extend(added)
        current, final_specs = run(kept, added[0] if step == 1 else tuple(added))
        trail.append(current)
    return KeepFloatResult(
        kept=tuple(kept),
        trail=tuple(trail),
        initial=initial,
        quantize=final_specs[0],
        prune=final_specs[1],
        metric_name=metric_name,
        ranking=tuple(e for e in entries if isinstance(e, KeepFloatCandidate)),
    )


@dataclass(frozen=True)
class KeepFloatResult:
    """The layers kept float (in the order added), every trial made, and the final recipe.

    ``trail`` holds the evaluations this search made (the initial one only when it had
    to evaluate it), each ``setting`` the layer added (a tuple when a step added
    several); ``size_cost`` is the final compressed size minus the full recipe's, in
    bytes; ``ranking`` the per-byte ranking the layers were taken from, when it was one.
    """

    kept: tuple[str, ...]
    trail: tuple[Trial, ...]
    initial: Trial
    quantize: QuantSpec | None
    prune: PruneSpec | None
    metric_name: str = "accuracy"
    ranking: tuple[KeepFloatCandidate, ...] = ()

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
        final, initial = self.final.size, self.initial.size
        assert final is not None and initial is not None  # keep_float's trials count sizes
        return final - initial

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
            "ranking": [
                {
                    "layer": c.layer,
                    "cost": c.cost,
                    "drop": c.drop,
                    "estimated_drop": c.estimated_drop,
                    "proxy": c.proxy,
                }
                for c in self.ranking[:RANKING_SHOWN]
            ],
        }
