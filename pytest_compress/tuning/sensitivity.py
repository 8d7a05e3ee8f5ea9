"""Layer sensitivity: which layers a recipe hurts most when each is compressed alone.

``layer_sensitivity`` compresses one layer at a time with the check's own recipe, the
rest of the model left float, and evaluates each copy through the caller's callback.
Cost: one evaluation per measured layer. The layers the recipe touches are ordered
largest first (by weight elements) and capped at ``limit`` *before* any evaluation,
so a big model costs at most ``limit`` evaluations; the ranking is by drop, largest
first.

"The same recipe, on that layer alone" means exactly what the full recipe does to
that layer:

- quantization, layer-scope pruning (amount, threshold, channel, N:M) and activation
  hooks depend on the layer alone, so the spec is narrowed to it (``include`` = its
  name, matched literally);
- *global* magnitude pruning ranks all layers together, so the layer gets the very mask
  the full recipe gives it (computed once over the recipe's selection), not the global
  amount applied to it alone: a recipe that prunes ``fc1`` to 95 % to reach 80 %
  overall is blamed for those 95 %.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from typing import Any, TypeGuard, TypeVar

import torch
from torch import nn

from ..engine.apply import compress_model, low_memory_enabled, prune_model, working_copy
from ..engine.layers import Layer, compressible_layers, literal_pattern, selector
from ..engine.lazy import replace_parameter
from ..engine.specs import PruneSpec, QuantSpec, as_prune_spec, as_quant_spec, describe_recipe
from ..errors import SpecError
from ..metrics import MetricKind
from ..tables import text_table
from .grids import DEFAULT_SENSITIVITY_LAYERS

DEFAULT_LIMIT = DEFAULT_SENSITIVITY_LAYERS
SHOWN_IN_MESSAGE = 3


_Spec = TypeVar("_Spec", QuantSpec, PruneSpec)


def _applies(spec: _Spec | None, model: nn.Module, layer: Layer) -> TypeGuard[_Spec]:
    return spec is not None and selector(model, spec.include, spec.exclude)(layer.name)


def touched_layers(
    model: nn.Module, quantize: QuantSpec | None, prune: PruneSpec | None
) -> list[Layer]:
    """The compressible layers the recipe compresses, in model order."""
    chosen = {
        layer.name
        for spec in (quantize, prune)
        if spec is not None
        for layer in compressible_layers(model, spec.include, spec.exclude)
    }
    return [layer for layer in compressible_layers(model) if layer.name in chosen]


def _check_limit(limit: object) -> int | None:
    if limit is None:
        return None
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise SpecError(f"limit must be an int >= 1 (layers measured) or None (all), got {limit!r}")
    return limit


def layer_sensitivity(
    model: nn.Module,
    *,
    quantize: QuantSpec | str | None = None,
    prune: PruneSpec | float | str | None = None,
    evaluate: Callable[[nn.Module], float],
    float_metric: float,
    higher_is_better: bool = True,
    limit: int | None = DEFAULT_LIMIT,
    calibration_data: Iterable[Any] | None = None,
    metric_name: str = "accuracy",
    max_seconds: float | None = None,
    clock: Callable[[], float] = time.perf_counter,
) -> SensitivityResult:
    """Each touched layer compressed alone with the recipe, evaluated by ``evaluate(model)``.

    ``float_metric`` is the uncompressed model's metric (the check has it already); a
    layer's drop is ``float_metric - metric`` (the increase when lower is better).
    ``model`` is never modified. At most ``limit`` evaluations (None: every layer).
    ``calibration_data`` is needed when ``quantize`` quantizes activations (``"w8a8"``).
    With ``max_seconds``, no further layer is started once that much time (on ``clock``)
    has passed: the rest are reported unmeasured, and ``timed_out`` says why.
    """
    quant_spec, prune_spec = _recipe(quantize, prune, evaluate)
    cap = _check_limit(limit)
    layers = touched_layers(model, quant_spec, prune_spec)
    # Largest first; sorted() is stable, so equal sizes keep model order.
    by_size = sorted(layers, key=lambda layer: -layer.module.weight.numel())
    measured = by_size if cap is None else by_size[:cap]
    skipped = tuple(layer.name for layer in by_size[len(measured) :])

    global_reference = _global_reference(model, prune_spec)
    results = []
    started, timed_out = clock(), False
    for index, layer in enumerate(measured):
        if max_seconds is not None and index and clock() - started >= max_seconds:
            skipped = tuple(entry.name for entry in measured[index:]) + skipped
            timed_out = True
            break
        alone = _compress_alone(
            model, layer, quant_spec, prune_spec, global_reference, calibration_data
        )
        metric = float(evaluate(alone))
        drop = float_metric - metric if higher_is_better else metric - float_metric
        results.append(LayerSensitivity(layer.name, layer.module.weight.numel(), metric, drop))
    # Most harmful first; ties keep the largest-first order.
    ranked = sorted(results, key=lambda entry: -entry.drop)
    return SensitivityResult(
        layers=tuple(ranked),
        skipped=skipped,
        timed_out=timed_out,
        float_metric=float_metric,
        recipe=describe_recipe(quant_spec, prune_spec),
        metric_name=metric_name,
        higher_is_better=higher_is_better,
    )


def _recipe(
    quantize: QuantSpec | str | None, prune: PruneSpec | float | str | None, evaluate: object
) -> tuple[QuantSpec | None, PruneSpec | None]:
    # an exported function: shorthands are parsed here, where a user hands them in
    quant_spec, prune_spec = as_quant_spec(quantize), as_prune_spec(prune)
    if quant_spec is None and prune_spec is None:
        raise SpecError("layer_sensitivity needs quantize=... and/or prune=...: a recipe to blame")
    if not callable(evaluate):
        raise SpecError(f"evaluate must be a callable evaluate(model) -> float, got {evaluate!r}")
    return quant_spec, prune_spec


def _global_reference(model: nn.Module, prune: PruneSpec | None) -> nn.Module | None:
    """Global ranking couples the layers: the model pruned once over the whole selection,
    from which each layer takes its own slice (None for any other pruning)."""
    if prune is None or prune.amount is None or prune.scope != "global":
        return None
    return prune_model(model, replace(prune, activation_threshold=None))


def _compress_alone(
    model: nn.Module,
    layer: Layer,
    quantize: QuantSpec | None,
    prune: PruneSpec | None,
    global_reference: nn.Module | None,
    calibration_data: Iterable[Any] | None,
) -> nn.Module:
    only = (literal_pattern(layer.name),)
    layer_quant = (
        replace(quantize, include=only, exclude=()) if _applies(quantize, model, layer) else None
    )
    layer_prune = None
    base = model
    if _applies(prune, model, layer):
        assert prune is not None
        if global_reference is not None:
            base = working_copy(model)
            source = global_reference.get_parameter(layer.weight_name)
            target = base.get_parameter(layer.weight_name)
            if low_memory_enabled():  # the clone's weight is the user's: swap, never write
                replace_parameter(base, target, source)
            else:
                with torch.no_grad():
                    target.copy_(source)
            if prune.activation_threshold is not None:
                layer_prune = PruneSpec(
                    activation_threshold=prune.activation_threshold, include=only
                )
        else:
            layer_prune = replace(prune, include=only, exclude=())
    if layer_quant is None and layer_prune is None:
        return base if base is not model else working_copy(model)
    return compress_model(
        base, quantize=layer_quant, prune=layer_prune, calibration_data=calibration_data
    )


@dataclass(frozen=True)
class LayerSensitivity:
    """One layer compressed alone: its weight elements, the metric, and the drop it causes."""

    layer: str
    parameters: int
    metric: float
    drop: float


@dataclass(frozen=True)
class SensitivityResult:
    """Layers ranked most harmful first, and the layers left unmeasured by the cap."""

    layers: tuple[LayerSensitivity, ...]
    skipped: tuple[str, ...]
    float_metric: float
    recipe: str
    metric_name: str = "accuracy"
    higher_is_better: bool = True
    # the time budget (--compress-sensitivity-seconds) ran out before every layer was measured
    timed_out: bool = False

    @property
    def evaluations(self) -> int:
        return len(self.layers)

    @property
    def ranked(self) -> tuple[str, ...]:
        """Layer names, most harmful first."""
        return tuple(entry.layer for entry in self.layers)

    def harmful(self) -> tuple[LayerSensitivity, ...]:
        """The layers whose drop alone is positive, most harmful first."""
        return tuple(entry for entry in self.layers if entry.drop > 0)

    def _change(self, entry: LayerSensitivity) -> str:
        # Show the metric's own movement: accuracy falls (-2.1 pp), a loss rises (+0.05).
        change = -entry.drop if self.higher_is_better else entry.drop
        sign = "-" if change < 0 else "+"
        return f"{sign}{MetricKind.named(self.metric_name).difference(abs(change))}"

    def summary(self, top: int = SHOWN_IN_MESSAGE) -> str:
        """``most sensitive layers: fc1 (-2.1 pp alone), conv2 (-0.6 pp alone)``.

        Only layers that hurt alone are named (at most ``top``); the cap is mentioned
        when it left layers unmeasured.
        """
        shown = self.harmful()[:top]
        if shown:
            names = ", ".join(f"{e.layer} ({self._change(e)} alone)" for e in shown)
            text = f"most sensitive layers: {names}"
        else:
            text = "most sensitive layers: none hurts alone (the drop comes from layers together)"
        if self.timed_out:
            text += (
                f"; stopped early by the time budget (--compress-sensitivity-seconds): "
                f"{len(self.skipped)} layers not measured"
            )
        elif self.skipped:
            text += f"; {len(self.skipped)} smaller layers not measured"
        return text

    def table(self) -> str:
        """Every measured layer, most harmful first: name, weights, metric, change."""
        metric = MetricKind.named(self.metric_name)
        header = ("layer", "weights", self.metric_name, "change")
        rows = [
            (e.layer, f"{e.parameters:,}", metric.value(e.metric), self._change(e))
            for e in self.layers
        ]
        return "\n".join(text_table(header, rows))

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe: every measured layer (ranked) and the skipped ones."""
        return {
            "recipe": self.recipe,
            "float_metric": self.float_metric,
            "evaluations": self.evaluations,
            "layers": [
                {"layer": e.layer, "parameters": e.parameters, "metric": e.metric, "drop": e.drop}
                for e in self.layers
            ],
            "skipped": list(self.skipped),
            "timed_out": self.timed_out,
        }
