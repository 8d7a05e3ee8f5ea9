"""The recipe-invariant gate: does a compressed model hold what its recipe claims?

Property tests prove the engine's mapping on random tensors; this proves it on the
artifact in front of the user, by counting, independently of how it was made (the
engine's own copy, or a ``compressor=`` pipeline's module):

- **integer formats**: where the engine's compression record is present, every value is
  exactly on its recorded grid of ``2**bits`` codes; otherwise (a compressor's module)
  each weight row that shares a scale (a channel, a group of its inputs, or the whole
  tensor) holds at most ``2**bits`` distinct values;
- **float formats**: every value is exactly representable in the target dtype (fp8 after
  its recorded per-channel scale);
- **pruning**, against the float model: each layer (or the selection, for global
  pruning) holds at least the zeros the amount claims, every N:M group at most N
  non-zeros, every channel-pruned layer at least its zeroed channels, and for threshold
  pruning every weight below ``alpha * max|w|`` of the float layer is zero and, without
  quantization (which may round a small kept weight to 0), none above it is.

The weights of ``Linear``, ``Conv*`` and ``Embedding`` layers the recipe selects are
verified; ``parameters="all"`` biases are not. ``verify_recipe`` returns the violations,
each naming the layer and the numbers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from .floats import FLOAT_DTYPES, FloatParams, cast_to_format
from .groups import group_rows
from .layers import Layer, compressible_layers
from .measure import count_nonzero
from .record import QuantParams, get_record
from .specs import PruneSpec, QuantSpec


@dataclass(frozen=True)
class Violation:
    """One broken claim: the layer, what the recipe claims, and what was found."""

    layer: str
    claim: str
    found: str

    def describe(self) -> str:
        return f"{self.layer}: {self.found} ({self.claim})"


def verify_recipe(
    original: nn.Module,
    compressed: nn.Module,
    quantize: QuantSpec | None,
    prune: PruneSpec | None,
) -> list[Violation]:
    """Every way ``compressed`` breaks what ``quantize`` and ``prune`` claim (``original``:
    the float model the pruning claims are measured against)."""
    violations: list[Violation] = []
    if prune is not None and prune.prunes_weights:
        violations += _pruning(original, compressed, prune, quantized=quantize is not None)
    if quantize is not None:
        violations += _quantization(compressed, quantize)
    return violations


# --- quantization ----------------------------------------------------------------------


def _quantization(compressed: nn.Module, spec: QuantSpec) -> list[Violation]:
    record = get_record(compressed).quantized
    claim = spec.describe()
    found = []
    for layer in compressible_layers(compressed, spec.include, spec.exclude):
        weight = layer.module.weight.detach()
        params = record.get(layer.weight_name)
        if spec.format != "int":
            problem = _not_representable(weight, spec, params)
        elif isinstance(params, QuantParams) and params.bits == spec.bits:
            # on a recorded grid of 2**bits codes: at most 2**bits values per row, no count
            problem = _off_grid(weight, params, layer)
        else:
            problem = _too_many_values(weight, layer, spec)
        if problem is not None:
            found.append(Violation(layer.name, claim, problem))
    return found


def _rows(weight: torch.Tensor, layer: Layer, spec: QuantSpec) -> torch.Tensor:
    """The weight as rows that share one scale."""
    if not spec.per_channel or weight.dim() < 2:
        return weight.reshape(1, -1)
    axis = layer.output_axis
    if spec.group_size is not None:
        return group_rows(weight, axis, spec.group_size)
    return weight.movedim(axis, 0).reshape(weight.shape[axis], -1)


def _too_many_values(weight: torch.Tensor, layer: Layer, spec: QuantSpec) -> str | None:
    rows = _rows(weight, layer, spec)
    if rows.numel() == 0:
        return None
    ordered = rows.sort(dim=1).values
    distinct = 1 + (ordered[:, 1:] != ordered[:, :-1]).sum(dim=1)
    allowed = 2 ** int(spec.bits or 8)
    worst = int(distinct.argmax())
    if int(distinct[worst]) <= allowed:
        return None
    unit = "group" if spec.group_size else ("channel" if rows.shape[0] > 1 else "tensor")
    return (
        f"{unit} {worst} holds {int(distinct[worst])} distinct values; {spec.bits} bits "
        f"allow {allowed}"
    )


def _off_grid(weight: torch.Tensor, params: QuantParams, layer: Layer) -> str | None:
    # the same count the file format makes (inside the runner's grid_memo, made once)
    if params.on_grid(weight, layer.weight_name):
        return None
    return f"values off the recorded {params.bits}-bit grid"


def _not_representable(weight: torch.Tensor, spec: QuantSpec, params: object) -> str | None:
    if isinstance(params, FloatParams) and params.scale is not None:
        # scaled fp8: on the format's grid when casting again changes nothing
        again = cast_to_format(weight, params, "weight")
    elif spec.format.startswith("fp8"):
        return None  # scaled, and no record of the scale: nothing exact to compare
    else:
        again = weight.to(FLOAT_DTYPES[spec.format]).to(weight.dtype)
    wrong = int((again != weight).sum())
    if wrong == 0:
        return None
    return f"{wrong} of {weight.numel()} values are not representable in {spec.format}"


# --- pruning -------------------------------------------------------------------------------


def _pruning(
    original: nn.Module, compressed: nn.Module, spec: PruneSpec, *, quantized: bool
) -> list[Violation]:
    claim = spec.describe()
    layers = compressible_layers(compressed, spec.include, spec.exclude)
    found = []
    total_zeros, total = 0, 0
    for layer in layers:
        weight = layer.module.weight.detach()
        zeros = weight.numel() - count_nonzero(weight)
        total_zeros, total = total_zeros + zeros, total + weight.numel()
        before = original.get_parameter(layer.weight_name).detach()
        problem = _layer_pruning(weight, before, layer, spec, zeros, quantized=quantized)
        if problem is not None:
            found.append(Violation(layer.name, claim, problem))
    if spec.amount is not None and spec.scope == "global" and total:
        claimed = round(spec.amount * total)
        if total_zeros < claimed:
            selection = f"the {len(layers)} selected layers"
            found.append(
                Violation(selection, claim, f"{total_zeros} zeros of {total}; {claimed} claimed")
            )
    return found


def _layer_pruning(
    weight: torch.Tensor,
    before: torch.Tensor,
    layer: Layer,
    spec: PruneSpec,
    zeros: int,
    *,
    quantized: bool,
) -> str | None:
    if spec.n_m is not None:
        return _n_m(weight, layer, *spec.n_m)
    if spec.structure == "channel" and spec.amount is not None:
        axis = layer.output_axis
        channels = weight.shape[axis]
        empty = int((weight.movedim(axis, 0).reshape(channels, -1).abs().sum(1) == 0).sum())
        claimed = round(spec.amount * channels)
        return None if empty >= claimed else f"{empty} zero channels; {claimed} claimed"
    if spec.amount is not None and spec.scope == "layer":
        claimed = round(spec.amount * weight.numel())
        return None if zeros >= claimed else f"{zeros} zeros of {weight.numel()}; {claimed} claimed"
    if spec.threshold is not None:
        return _threshold(weight, before, spec.threshold, quantized=quantized)
    return None


def _n_m(weight: torch.Tensor, layer: Layer, n: int, m: int) -> str | None:
    rows = weight.movedim(layer.input_axis, -1)
    if rows.shape[-1] % m:
        return None  # the engine prunes only whole groups; the ragged rest is unclaimed
    groups = (rows.reshape(-1, m) != 0).sum(dim=1)
    broken = int((groups > n).sum())
    return None if broken == 0 else f"{broken} groups of {m} hold more than {n} non-zeros"


def _threshold(
    weight: torch.Tensor, before: torch.Tensor, alpha: float, *, quantized: bool
) -> str | None:
    magnitude = before.abs().double()
    bound = alpha * float(magnitude.max()) if magnitude.numel() else math.inf
    below = magnitude < bound
    kept_below = int((below & (weight != 0)).sum())
    if kept_below:
        return f"{kept_below} weights below {alpha:g} * max|w| were kept"
    if not quantized:
        pruned_above = int((~below & (weight == 0) & (before != 0)).sum())
        if pruned_above:
            return f"{pruned_above} weights at or above {alpha:g} * max|w| were pruned"
    return None
