"""Layer sensitivity: which layers a recipe hurts most when each is compressed alone.

``layer_sensitivity`` compresses one layer at a time with the check's own recipe, the
rest of the model left float, and evaluates each copy through the caller's callback.
Cost: one evaluation per measured layer, at most ``limit`` of them, chosen *before* any
evaluation:

- with ``proxy_data``, every layer the recipe touches is first ranked by the cheap proxy
  (``tuning.proxy``: its own output error compressed, one short forward pass for all
  layers), and only the proxy's top ``limit`` are confirmed with the real metric. The
  other layers keep their proxy error in ``proxied`` ("ranked by proxy only");
- without it, the ``limit`` largest layers (by weight elements) are measured.

The ranking is by the real drop, largest first, over the measured layers only: a layer
the proxy ranks below ``limit`` is never named however much it would hurt (the proxy
sees a layer's output error, not what the rest of the model makes of it).

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

from torch import nn

from ..engine.apply import compress_model, prune_model, working_copy
from ..engine.layers import Layer, compressible_layers, literal_pattern, selector
from ..engine.lazy import replace_parameter
from ..engine.specs import PruneSpec, QuantSpec, as_prune_spec, as_quant_spec, describe_recipe
from ..errors import SpecError
from ..metrics import MetricKind
from ..tables import text_table
from .grids import DEFAULT_SENSITIVITY_LAYERS
from .proxy import output_errors

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
    proxy_data: Iterable[Any] | None = None,
) -> SensitivityResult:
    """Each touched layer compressed alone with the recipe, evaluated by ``evaluate(model)``.

    ``float_metric`` is the uncompressed model's metric (the check has it already); a
    layer's drop is ``float_metric - metric`` (the increase when lower is better).
    ``model`` is never modified. At most ``limit`` evaluations (None: every layer).
    ``calibration_data`` is needed when ``quantize`` quantizes activations (``"w8a8"``).
    With ``max_seconds``, no further layer is started once that much time (on ``clock``)
    has passed: the rest are reported unmeasured, and ``timed_out`` says why.
    With ``proxy_data`` (batches, or ``(inputs, targets)`` pairs), the measured layers are
    the proxy's top ``limit`` rather than the largest.
    """
    quant_spec, prune_spec = _recipe(quantize, prune, evaluate)
    cap = _check_limit(limit)
    order, proxied = _candidates(model, quant_spec, prune_spec, proxy_data, calibration_data)
    measured = order if cap is None else order[:cap]
    skipped = tuple(layer.name for layer in order[len(measured) :])

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
        proxied=proxied,
        float_metric=float_metric,
        recipe=describe_recipe(quant_spec, prune_spec),
        metric_name=metric_name,
        higher_is_better=higher_is_better,
    )


def _candidates(
    model: nn.Module,
    quantize: QuantSpec | None,
    prune: PruneSpec | None,
    proxy_data: Iterable[Any] | None,
    calibration_data: Iterable[Any] | None,
) -> tuple[list[Layer], tuple[LayerProxy, ...]]:
    """The touched layers in the order they are measured: by proxy error with
    ``proxy_data`` (and that ranking), else largest first (and no ranking)."""
    layers = touched_layers(model, quantize, prune)
    # Largest first; sorted() is stable, so equal sizes keep model order.
    by_size = sorted(layers, key=lambda layer: -layer.module.weight.numel())
    if proxy_data is None:
        return by_size, ()
    proxied = proxy_ranking(model, by_size, quantize, prune, proxy_data, calibration_data)
    by_name = {layer.name: layer for layer in by_size}
    return [by_name[entry.layer] for entry in proxied], proxied


def proxy_ranking(
    model: nn.Module,
    layers: list[Layer],
    quantize: QuantSpec | None,
    prune: PruneSpec | None,
    batches: Iterable[Any],
    calibration_data: Iterable[Any] | None,
) -> tuple[LayerProxy, ...]:
    """Every layer in ``layers`` with its proxy error, largest error first.

    One compressed copy of the whole model (the twins carry exactly what the full recipe
    does to each layer) and one short forward pass, whatever the number of layers. Ties
    keep the order of ``layers`` (the caller's: largest first).
    """
    compressed = compress_model(
        model, quantize=quantize, prune=prune, calibration_data=calibration_data
    )
    errors = output_errors(model, compressed, layers, batches)
    entries = [
        LayerProxy(layer.name, layer.module.weight.numel(), errors[layer.name]) for layer in layers
    ]
    return tuple(sorted(entries, key=lambda entry: -entry.error))


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
    # A shallow clone with the one layer replaced (the low-memory mode's weights): the
    # same values as a deep copy, bit for bit, without copying every other layer for
    # each layer measured.
    if _applies(prune, model, layer):
        assert prune is not None
        if global_reference is not None:
            base = working_copy(model, low_memory=True)
            source = global_reference.get_parameter(layer.weight_name)
            replace_parameter(base, base.get_parameter(layer.weight_name), source)
            if prune.activation_threshold is not None:
                layer_prune = PruneSpec(
                    activation_threshold=prune.activation_threshold, include=only
                )
        else:
            layer_prune = replace(prune, include=only, exclude=())
    if layer_quant is None and layer_prune is None:
        return base if base is not model else working_copy(model, low_memory=True)
    return compress_model(
        base,
        quantize=layer_quant,
        prune=layer_prune,
        calibration_data=calibration_data,
        low_memory=True,
    )


@dataclass(frozen=True)
class LayerSensitivity:
    """One layer compressed alone: its weight elements, the metric, and the drop it causes."""

    layer: str
    parameters: int
    metric: float
    drop: float


@dataclass(frozen=True)
class LayerProxy:
    """One layer's proxy: its relative squared output error compressed (``tuning.proxy``)."""

    layer: str
    parameters: int
    error: float


@dataclass(frozen=True)
class SensitivityResult:
    """Layers ranked most harmful first, and the layers left unmeasured by the cap.

    ``proxied``: every touched layer by its proxy error, largest first, when the layers
    to measure were chosen by the proxy (empty when they were the largest); ``skipped``
    then lists the layers ranked by the proxy only, in its order.
    """

    layers: tuple[LayerSensitivity, ...]
    skipped: tuple[str, ...]
    float_metric: float
    recipe: str
    metric_name: str = "accuracy"
    higher_is_better: bool = True
    # the time budget (--compress-sensitivity-seconds) ran out before every layer was measured
    timed_out: bool = False
    proxied: tuple[LayerProxy, ...] = ()

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

        Only layers that hurt alone are named (at most ``top``), and only measured ones:
        a layer ranked by the proxy only has no drop to show. What was left unmeasured
        (by the cap or the time budget) is counted.
        """
        shown = self.harmful()[:top]
        if shown:
            names = ", ".join(f"{e.layer} ({self._change(e)} alone)" for e in shown)
            text = f"most sensitive layers: {names}"
        else:
            text = "most sensitive layers: none hurts alone (the drop comes from layers together)"
        unmeasured = len(self.skipped)
        if self.timed_out:
            text += (
                f"; stopped early by the time budget (--compress-sensitivity-seconds): "
                f"{unmeasured} layers not measured"
            )
            if self.proxied:
                text += " (ranked by output error only)"
        elif unmeasured and self.proxied:
            text += f"; {unmeasured} more layers ranked by output error only, not measured"
        elif unmeasured:
            text += f"; {unmeasured} smaller layers not measured"
        return text

    def table(self) -> str:
        """Every layer, most harmful first: name, weights, metric, change (and, when the
        proxy chose what to measure, its output error; the layers it ranked alone last)."""
        metric = MetricKind.named(self.metric_name)
        errors = {entry.layer: entry.error for entry in self.proxied}
        header: tuple[str, ...] = ("layer", "weights", self.metric_name, "change")
        rows: list[tuple[str, ...]] = [
            (e.layer, f"{e.parameters:,}", metric.value(e.metric), self._change(e))
            for e in self.layers
        ]
        if self.proxied:
            header = (*header, "output error")
            rows = [(*row, f"{errors[row[0]]:.3g}") for row in rows]
            rows += [
                (p.layer, f"{p.parameters:,}", "not measured", "proxy only", f"{p.error:.3g}")
                for p in self.proxied
                if p.layer in self.skipped
            ]
        return "\n".join(text_table(header, rows))

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe: every measured layer (ranked), the skipped ones, and the proxy's ranking
        of every layer when it chose what to measure (``ranked_by``: proxy or size)."""
        return {
            "recipe": self.recipe,
            "metric_name": self.metric_name,
            "higher_is_better": self.higher_is_better,
            "float_metric": self.float_metric,
            "evaluations": self.evaluations,
            "ranked_by": "proxy" if self.proxied else "size",
            "layers": [
                {"layer": e.layer, "parameters": e.parameters, "metric": e.metric, "drop": e.drop}
                for e in self.layers
            ],
            "skipped": list(self.skipped),
            "timed_out": self.timed_out,
            "proxies": [
                {"layer": p.layer, "parameters": p.parameters, "output_error": p.error}
                for p in self.proxied
            ],
        }

    @classmethod
    def from_dict(cls, data: Any) -> SensitivityResult | None:
        """The result ``to_dict`` wrote, or None when ``data`` is not exactly that shape
        (a stored entry someone edited or an older version wrote: measured again)."""
        try:
            return _from_dict(data)
        except (KeyError, TypeError, ValueError):
            return None


def _number(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"not a number: {value!r}")
    return float(value)


def _count(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise TypeError(f"not a count: {value!r}")
    return value


def _text(value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError(f"not a string: {value!r}")
    return value


def _from_dict(data: dict[str, Any]) -> SensitivityResult:
    layers = tuple(
        LayerSensitivity(
            _text(e["layer"]), _count(e["parameters"]), _number(e["metric"]), _number(e["drop"])
        )
        for e in data["layers"]
    )
    proxied = tuple(
        LayerProxy(_text(p["layer"]), _count(p["parameters"]), _number(p["output_error"]))
        for p in data["proxies"]
    )
    flags = (data["higher_is_better"], data["timed_out"])
    if not all(isinstance(flag, bool) for flag in flags):
        raise TypeError(f"not flags: {flags!r}")
    result = SensitivityResult(
        layers=layers,
        skipped=tuple(_text(name) for name in data["skipped"]),
        float_metric=_number(data["float_metric"]),
        recipe=_text(data["recipe"]),
        metric_name=_text(data["metric_name"]),
        higher_is_better=flags[0],
        timed_out=flags[1],
        proxied=proxied,
    )
    if result.to_dict() != data:  # an extra key, a count that disagrees: not ours
        raise ValueError("not a sensitivity result as to_dict writes it")
    return result
