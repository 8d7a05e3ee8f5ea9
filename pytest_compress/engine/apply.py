"""Model-level recipes: each returns a compressed copy and never touches the model it is given.

``prune_model`` bakes zeros into ordinary parameters; ``quantize_model`` replaces
weights by their fake-quantized values (recording the mapping, so ``save_compressed``
can store the integer codes) and, when asked, rounds layer outputs at run time;
``compress_model`` prunes, then quantizes (the Deep Compression order).
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, cast

import torch
from torch import nn

from ..errors import CalibrationError, DataError, ModelError, SpecError
from . import magnitudes
from . import prune as masks
from .activations import (
    ActivationDynamicQuantize,
    ActivationFakeQuantize,
    ActivationFloatCast,
    ActivationPrune,
    add_activation_hook,
)
from .batches import observe
from .clipping import mse_qparams
from .floats import FloatParams, cast_elements, cast_to_format, float_params
from .gptq import gptq_layer
from .groups import input_size
from .hessian import hessians as collect_hessians
from .layers import (
    Layer,
    compressible_layers,
    fold_torch_pruning,
    pruned_by_torch,
    require_layers,
    selector,
)
from .lazy import (
    LazyWeight,
    MaskedValues,
    PackedCodes,
    RoundedValues,
    replace_parameter,
    shallow_clone,
    values_of,
)
from .observers import RangeObserver
from .quant import check_finite, compute_qparams, fake_quantize_with, quant_range
from .record import CompressionRecord, QuantParams, get_record, set_record
from .spares import copy_twins
from .specs import PruneSpec, QuantSpec, as_prune_spec, as_quant_spec


def copy_model(model: nn.Module) -> nn.Module:
    """A deep copy of ``model``, or a ``ModelError`` saying why it cannot be copied.

    Weights pruned with ``torch.nn.utils.prune`` become plain parameters holding their
    masked values in the copy (same outputs), so every recipe sees and counts them.
    """
    if not isinstance(model, nn.Module):
        raise ModelError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    # A weight that torch.nn.utils.prune computes (weight_orig * weight_mask) is a tensor
    # with a history, which deepcopy refuses: the copy gets its value, and is then folded.
    computed = {
        id(value): value.detach().clone()
        for module in model.modules()
        for value in vars(module).values()
        if isinstance(value, torch.Tensor) and value.grad_fn is not None
    }
    # tensors the copy would allocate afresh go into spare memory instead (spares.py)
    memo = {**computed, **copy_twins(model)}
    try:
        copied = copy.deepcopy(model, memo)
    except Exception as error:  # any failure of a user's __deepcopy__ is reported the same way
        raise ModelError(
            f"cannot copy the model with copy.deepcopy ({type(error).__name__}: {error}); "
            "pytest-compress compresses a copy so that your model is never modified"
        ) from error
    fold_torch_pruning(copied)
    return copied


_LOW_MEMORY: ContextVar[bool] = ContextVar("pytest_compress_low_memory", default=False)


@contextmanager
def low_memory_mode(enabled: bool = True) -> Iterator[None]:
    """Within the block, recipes whose ``low_memory`` is not given compress a shallow clone
    holding packed weights (``lazy.py``) instead of a deep copy: the check runner sets it
    around a check, so that its search, sensitivity and keep-float copies follow too."""
    token = _LOW_MEMORY.set(enabled)
    try:
        yield
    finally:
        _LOW_MEMORY.reset(token)


def low_memory_enabled() -> bool:
    """Whether recipes compress shallow clones here (``low_memory_mode``)."""
    return _LOW_MEMORY.get()


def working_copy(model: nn.Module, *, low_memory: bool | None = None) -> nn.Module:
    """What a recipe compresses: a deep copy (``copy_model``), or in the low-memory mode a
    shallow clone sharing the model's tensors, its ``torch.nn.utils.prune`` weights folded
    in the clone only. ``low_memory`` None: as ``low_memory_mode`` says."""
    low_memory = _LOW_MEMORY.get() if low_memory is None else low_memory
    if not low_memory:
        return copy_model(model)
    if not isinstance(model, nn.Module):
        raise ModelError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    clone = shallow_clone(model)
    _fold_torch_pruning_in_clone(clone)
    return clone


def _fold_torch_pruning_in_clone(clone: nn.Module) -> None:
    """``fold_torch_pruning`` without ``prune.remove``, which writes the folded value into
    the ``_orig`` parameter: that parameter is the user's in a shallow clone."""
    for module in clone.modules():
        for name in pruned_by_torch(module):
            original = module._parameters.pop(f"{name}_orig")
            mask = module._buffers.pop(f"{name}_mask")
            assert original is not None and mask is not None
            hooks = module._forward_pre_hooks
            for key, hook in list(hooks.items()):
                if getattr(hook, "_tensor_name", None) == name:
                    del hooks[key]
            vars(module).pop(name, None)
            module._parameters[name] = nn.Parameter(
                original.detach() * mask, requires_grad=original.requires_grad
            )


def prune_model(
    model: nn.Module, spec: PruneSpec | float | str, *, low_memory: bool | None = None
) -> nn.Module:
    """A copy of ``model`` pruned by ``spec`` (a ``PruneSpec``, an amount such as 0.8, or "2:4").

    The zeros are baked into ordinary parameters: no ``torch.nn.utils.prune``
    re-parametrisation, state_dict keys unchanged. Activation pruning adds forward hooks.
    ``low_memory``: a shallow clone whose pruned weights are the model's own and a bit
    mask each (``lazy.py``), instead of a deep copy (None: as ``low_memory_mode`` says).
    """
    prune_spec = _required(as_prune_spec(spec), "prune")
    lazy = _LOW_MEMORY.get() if low_memory is None else low_memory
    compressed = working_copy(model, low_memory=lazy)
    _prune_in_place(compressed, prune_spec, lazy=lazy)
    return compressed


def quantize_model(
    model: nn.Module,
    spec: QuantSpec | str,
    calibration_data: Iterable[Any] | None = None,
    *,
    low_memory: bool | None = None,
) -> nn.Module:
    """A copy of ``model`` whose forward uses fake-quantized weights (and activations).

    ``calibration_data`` (batches of inputs, or (inputs, targets) pairs) is required
    when ``spec`` quantizes activations: their ranges are observed on it.
    ``low_memory``: a shallow clone holding the quantized weights as packed codes,
    dequantized while each layer runs (``lazy.py``), instead of a deep copy (None: as
    ``low_memory_mode`` says).
    """
    quant_spec = _required(as_quant_spec(spec), "quantize")
    _check_calibration(quant_spec, calibration_data)
    lazy = _LOW_MEMORY.get() if low_memory is None else low_memory
    compressed = working_copy(model, low_memory=lazy)
    _quantize_in_place(compressed, quant_spec, calibration_data, lazy=lazy)
    return compressed


def compress_model(
    model: nn.Module,
    *,
    quantize: QuantSpec | str | None = None,
    prune: PruneSpec | float | str | None = None,
    calibration_data: Iterable[Any] | None = None,
    low_memory: bool | None = None,
) -> nn.Module:
    """A copy of ``model`` pruned by ``prune`` and then quantized by ``quantize``.

    Pruned weights stay exactly zero after quantization (0.0 is always on the grid).
    ``low_memory``: the compressed weights are held packed in a shallow clone that shares
    every other tensor with ``model`` (``lazy.py``); the values, sizes and every number
    measured on the copy are the deep copy's, at about the packed bytes of extra memory
    (None: as ``low_memory_mode`` says, off by default).
    """
    quant_spec = as_quant_spec(quantize)
    prune_spec = as_prune_spec(prune)
    if quant_spec is None and prune_spec is None:
        raise SpecError(
            'compress_model needs quantize=... (e.g. "int8") and/or prune=... (e.g. 0.8)'
        )
    if quant_spec is not None:
        _check_calibration(quant_spec, calibration_data)
    lazy = _LOW_MEMORY.get() if low_memory is None else low_memory
    compressed = working_copy(model, low_memory=lazy)
    if prune_spec is not None:
        _prune_in_place(compressed, prune_spec, lazy=lazy)
    if quant_spec is not None:
        _quantize_in_place(compressed, quant_spec, calibration_data, lazy=lazy)
    return compressed


def _required(spec: Any, argument: str) -> Any:
    if spec is None:
        raise SpecError(f"{argument} must be given (a spec or a shorthand), got None")
    return spec


def _check_calibration(spec: QuantSpec, calibration_data: Iterable[Any] | None) -> None:
    if spec.needs_calibration and calibration_data is None:
        why = (
            "rounds weights by GPTQ, which needs calibration_data: batches of inputs (or "
            "(inputs, targets) pairs) to measure each layer's inputs on"
            if spec.method == "gptq"
            else "quantizes activations, which needs calibration_data: batches of inputs "
            "(or (inputs, targets) pairs) to observe activation ranges on"
        )
        raise DataError(f"quantize={spec.describe()!r} {why}")


# --- pruning -------------------------------------------------------------------------


def _prune_in_place(model: nn.Module, spec: PruneSpec, *, lazy: bool = False) -> None:
    """Zeros written into the copy's weights, or (``lazy``) each pruned weight replaced in
    the clone by the user's weight and a mask of what stays."""
    layers = compressible_layers(model, spec.include, spec.exclude)
    require_layers(layers, spec.include, spec.exclude)
    if spec.prunes_weights:
        weights = [layer.module.weight for layer in layers]
        for layer, weight in zip(layers, weights, strict=True):
            # max|w| is NaN or infinite exactly when a weight is: one pass of both
            # reductions per layer, and the error names the parameter instead of a
            # position in a list.
            if weight.numel() and not bool(
                torch.isfinite(torch.stack(torch.aminmax(weight.detach()))).all()
            ):
                check_finite(weight.detach(), layer.weight_name)
        if _by_amount(spec):
            _prune_by_amount(model, layers, spec, lazy)
        else:
            with torch.no_grad():
                for layer, keep in zip(layers, _keep_masks(layers, spec), strict=True):
                    weight = layer.module.weight
                    if lazy:
                        replace_parameter(model, weight, MaskedValues.of(weight, keep))
                    else:
                        weight.masked_fill_(~keep, 0.0)
    if spec.activation_threshold is not None:
        for layer in layers:
            add_activation_hook(layer.module, ActivationPrune(spec.activation_threshold))


def _by_amount(spec: PruneSpec) -> bool:
    """Unstructured magnitude pruning of an amount, per layer or global."""
    return (
        spec.n_m is None
        and spec.structure != "channel"
        and spec.threshold is None
        and spec.amount is not None
    )


def _prune_by_amount(model: nn.Module, layers: list[Layer], spec: PruneSpec, lazy: bool) -> None:
    """The k smallest |w| zeroed, block by block (``magnitudes.py``): the same weights
    ``magnitude_mask`` / ``global_magnitude_masks`` prune, without holding a mask (or every
    |w| in float32) for the whole model. Lazy: zeroed in a copy of one layer at a time,
    whose nonzeros become the layer's mask."""
    assert spec.amount is not None
    plan: list[magnitudes.Cut | None] = [None] * len(layers)
    if spec.scope == "global":
        weights = [layer.module.weight for layer in layers]
        # every cut is chosen before any weight changes
        plan = list(magnitudes.cuts(weights, round(spec.amount * sum(w.numel() for w in weights))))
    for index, layer in enumerate(layers):
        weight = layer.module.weight  # a tied weight's second layer sees the first's zeros
        work = _values_copy(weight) if lazy else weight
        cut = plan[index]
        if cut is None:
            (cut,) = magnitudes.cuts([work], round(spec.amount * work.numel()))
        magnitudes.prune_(work, cut)
        if lazy:
            replace_parameter(model, weight, MaskedValues.of(weight, work != 0))


def _values_copy(weight: torch.Tensor) -> torch.Tensor:
    """A new tensor holding ``weight``'s values, to be edited instead of the user's."""
    return weight.values() if isinstance(weight, LazyWeight) else weight.detach().clone()


def _keep_masks(layers: list[Layer], spec: PruneSpec) -> Iterator[torch.Tensor]:
    """Each layer's keep-mask, one at a time (structured, N:M and threshold rules)."""
    for layer in layers:
        w = layer.module.weight.detach()
        if spec.n_m is not None:
            n, m = spec.n_m
            yield masks.n_m_mask(w, n, m, axis=layer.input_axis)
        elif spec.structure == "channel":
            yield masks.channel_mask(
                w,
                axis=layer.output_axis,
                norm=spec.norm,
                amount=spec.amount,
                threshold=spec.threshold,
            )
        else:
            assert spec.threshold is not None
            yield masks.threshold_mask(w, spec.threshold)


# --- quantization --------------------------------------------------------------------


def _quantize_in_place(
    model: nn.Module,
    spec: QuantSpec,
    calibration_data: Iterable[Any] | None,
    *,
    lazy: bool = False,
) -> None:
    """Each selected weight rounded in the copy (its values written into it), or
    (``lazy``) replaced in the clone by its packed codes or float-format elements."""
    layers = compressible_layers(model, spec.include, spec.exclude)
    require_layers(layers, spec.include, spec.exclude)
    record = CompressionRecord(dict(get_record(model).quantized))
    selected = _parameters_to_quantize(model, layers, spec)
    _check_group_size(selected, spec)
    hessians: dict[str, torch.Tensor] = {}
    if spec.method == "gptq":
        assert calibration_data is not None
        hessians = collect_hessians(model, layers, calibration_data)
    by_weight = {id(layer.module.weight): layer for layer in layers}
    for names, param, axis in selected:
        layer = by_weight.get(id(param))
        hessian = hessians.get(layer.name) if layer is not None else None
        params: QuantParams | FloatParams
        if hessian is not None and layer is not None:
            values, params = gptq_layer(
                layer,
                hessian,
                bits=spec.bits,
                symmetric=spec.symmetric,
                group_size=spec.group_size,
                scale_dtype=_scale_dtype(spec),
            )
            if lazy:
                assert isinstance(params, QuantParams)
                codes = params.stored_codes(values, names[0], check=False)
                replace_parameter(model, param, PackedCodes.of(codes, params, values.dtype))
            else:
                with torch.no_grad():
                    param.copy_(values)
        elif lazy:
            packed, params = _packed_parameter(param, names[0], axis, spec)
            replace_parameter(model, param, packed)
        else:
            # written straight into the copy's parameter: no second tensor of its size
            params = _round_parameter(param.detach(), names[0], axis, spec)
        for name in names:
            record.quantized[name] = params
    set_record(model, record)
    if spec.activation_format is not None:
        for layer in layers:
            add_activation_hook(layer.module, ActivationFloatCast(spec.activation_format))
    if spec.activation_bits is not None and spec.observer == "dynamic":
        for layer in layers:
            add_activation_hook(layer.module, ActivationDynamicQuantize(spec.activation_bits))
    elif spec.activation_bits is not None:
        assert calibration_data is not None
        _calibrate_activations(model, layers, spec, calibration_data)


def _scale_dtype(spec: QuantSpec) -> torch.dtype | None:
    """The scales' dtype: the spec's, else float16 group-wise and the default otherwise."""
    if spec.scale_dtype is not None:
        return cast(torch.dtype, getattr(torch, spec.scale_dtype))
    return torch.float16 if spec.group_size is not None else None


def _mapping(
    x: torch.Tensor, name: str, axis: int | None, spec: QuantSpec
) -> QuantParams | FloatParams:
    """The mapping the spec's format and method (all but GPTQ) choose for ``x``."""
    if spec.is_float:
        return float_params(x, spec.format, axis=axis, name=name, scale_dtype=_scale_dtype(spec))
    group_size = spec.group_size if axis is not None else None
    choose = mse_qparams if spec.method == "mse" else compute_qparams
    scale, zero_point, axis = choose(
        x,
        bits=spec.bits,
        symmetric=spec.symmetric,
        axis=axis,
        name=name,
        group_size=group_size,
        scale_dtype=_scale_dtype(spec),
    )
    qmin, qmax = quant_range(spec.bits, symmetric=spec.symmetric)
    return QuantParams(scale, zero_point, spec.bits, axis, qmin, qmax, group_size)


def _round_parameter(
    x: torch.Tensor, name: str, axis: int | None, spec: QuantSpec
) -> QuantParams | FloatParams:
    """``x`` (the copy's parameter) rounded in place by the spec's format and method (all
    but GPTQ); its mapping."""
    params = _mapping(x, name, axis, spec)
    if isinstance(params, FloatParams):
        x.copy_(cast_to_format(x, params, name))
        return params
    # In place: each block is read before it is written.
    fake_quantize_with(
        x,
        params.scale,
        params.zero_point,
        qmin=params.qmin,
        qmax=params.qmax,
        axis=params.axis,
        group_size=params.group_size,
        out=x,
    )
    return params


def _packed_parameter(
    source: torch.Tensor, name: str, axis: int | None, spec: QuantSpec
) -> tuple[LazyWeight, QuantParams | FloatParams]:
    """``source`` (never written) as the low-memory mode holds it rounded: itself with its
    mapping, the values recomputed on use; and the mapping."""
    x = values_of(source).detach()
    params = _mapping(x, name, axis, spec)
    if isinstance(params, FloatParams):
        cast_elements(x, params, name)  # an overflow is refused now, naming the weight
    return RoundedValues(source.detach(), params), params


def _check_group_size(
    selected: list[tuple[list[str], nn.Parameter, int | None]], spec: QuantSpec
) -> None:
    """``SpecError`` naming every weight whose rows are shorter than ``group_size``,
    unless the spec allows them (``allow_short_rows``: such rows are one group each)."""
    if spec.group_size is None or spec.allow_short_rows:
        return
    short = [
        f"{names[0]} ({input_size(param.shape, axis)} inputs per channel)"
        for names, param, axis in selected
        if axis is not None and input_size(param.shape, axis) < spec.group_size
    ]
    if short:
        raise SpecError(
            f"QuantSpec.group_size={spec.group_size} is larger than the input dimension of "
            f"{', '.join(short[:5])}{' and more' if len(short) > 5 else ''}; use a smaller "
            "group_size, exclude those layers, or allow_short_rows=True to quantize each "
            "such row as one group (per channel)"
        )


def _parameters_to_quantize(
    model: nn.Module, layers: list[Layer], spec: QuantSpec
) -> list[tuple[list[str], nn.Parameter, int | None]]:
    """(every state_dict name of the parameter, the parameter, its per-channel axis)."""
    axes: dict[int, int | None] = {}
    for layer in layers:
        weight = layer.module.weight
        axes[id(weight)] = layer.output_axis if spec.per_channel and weight.dim() >= 2 else None
    if spec.parameters == "all":
        selected = selector(model, spec.include, spec.exclude)
        for module_name, module in model.named_modules():
            if not selected(module_name):
                continue
            for param in module.parameters(recurse=False):
                if param.is_floating_point() and id(param) not in axes:
                    per_channel = spec.per_channel and param.dim() >= 2
                    axes[id(param)] = 0 if per_channel else None

    names: dict[int, list[str]] = {}
    params: dict[int, nn.Parameter] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        if id(param) in axes:
            names.setdefault(id(param), []).append(name)
            params[id(param)] = param
    return [(names[key], params[key], axes[key]) for key in names]


def _calibrate_activations(
    model: nn.Module, layers: list[Layer], spec: QuantSpec, calibration_data: Iterable[Any]
) -> None:
    """Observe each selected layer's output range on the data, then round it at run time."""
    observers = _observe(model, layers, spec, calibration_data)
    _require_observed(observers, spec)
    bits = spec.activation_bits
    assert bits is not None
    qmin, qmax = quant_range(bits, symmetric=False)
    for layer in layers:
        scale, zero_point = observers[layer.name].qparams(bits)
        add_activation_hook(
            layer.module, ActivationFakeQuantize(scale, zero_point, bits, qmin, qmax)
        )


def _observe(
    model: nn.Module, layers: list[Layer], spec: QuantSpec, calibration_data: Iterable[Any]
) -> dict[str, RangeObserver]:
    """Each layer's observer, after a pass over the calibration data in eval mode."""
    observers = {layer.name: RangeObserver(spec.observer, spec.percentile) for layer in layers}
    watchers: dict[nn.Module, Any] = {layer.module: observers[layer.name] for layer in layers}
    observe(model, watchers, calibration_data, "activation ranges")
    return observers


def _require_observed(observers: dict[str, RangeObserver], spec: QuantSpec) -> None:
    """``CalibrationError`` naming every layer whose output range the data did not show.

    Skipping such a layer would leave its outputs in float while the recipe still says
    they are quantized.
    """
    never_ran = [name for name, observer in observers.items() if observer.calls == 0]
    no_values = [
        name for name, observer in observers.items() if observer.calls and not observer.observed
    ]
    if not never_ran and not no_values:
        return
    problems = []
    if never_ran:
        problems.append(f"{_names(never_ran)} never ran on the calibration data")
    if no_values:
        problems.append(f"{_names(no_values)} produced no floating-point output values")
    excluded = sorted({*spec.exclude, *never_ran, *no_values})
    raise CalibrationError(
        f"quantize={spec.describe()!r} cannot calibrate the activations of every selected "
        f"layer: {'; '.join(problems)}. Pass calibration_data that runs them, or leave them "
        f"out with QuantSpec(exclude={excluded!r}) (their weights then stay float too)"
    )


def _names(names: list[str]) -> str:
    quoted = ", ".join(repr(name) for name in names)
    return f"layer {quoted}" if len(names) == 1 else f"layers {quoted}"
