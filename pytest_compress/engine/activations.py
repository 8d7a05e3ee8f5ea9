"""Run-time activation compression: forward hooks that fake-quantize or prune a layer's
output, and a forward pre-hook that fake-quantizes its input per token.

The hooks are small callable objects (not closures) so ``copy.deepcopy`` copies them
with their module. ``add_activation_hook`` registers one and records it on its module
together with its ``RemovableHandle``: ``activation_hooks`` lists the hooks from that
record (so ``save_compressed`` can store them) and ``remove_activation_hooks`` takes them
off through their handles, never through torch's private hook dicts.

A deep copy (or a pickle round trip) of a model keeps this working: ``RemovableHandle``
pickles the hook dicts it refers to, so copying a module copies each handle with it, and
the copy's handle refers to the copied module's dicts (``copy.deepcopy``'s memo maps
them), removing the hook from the copy and never from the original.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import ClassVar

import torch
from torch import nn
from torch.nn.modules.conv import _ConvNd
from torch.utils.hooks import RemovableHandle

from .floats import FLOAT_DTYPES
from .quant import (
    QuantizedTensor,
    choose_qparams,
    dequantize,
    fake_quantize_with,
    quant_range,
    quantize_with,
)

# The module attribute holding the engine's activation hooks on that module, in the order
# they were registered (the order they run in). Set in the module's __dict__, as the
# compression record is, so copy.deepcopy and pickling carry it along.
_HOOKS_ATTR = "_pytest_compress_activation_hooks"


class ActivationHook:
    """Base of the engine's activation hooks: a forward hook that knows its handle.

    The handle lives in a slot, outside the instance ``__dict__``: a hook's ``vars`` (what
    reprs and the checks' model fingerprint read) hold only its parameters, while
    ``copy.deepcopy`` and pickling still carry the handle along.
    """

    __slots__ = ("__dict__", "_handle")
    _handle: RemovableHandle
    # A pre-hook sees (module, args) before forward and may return new args.
    pre: ClassVar[bool] = False

    def __call__(self, module: nn.Module, inputs: tuple, output: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class ActivationFakeQuantize(ActivationHook):
    """Rounds a layer's output onto a per-tensor grid calibrated on data."""

    def __init__(self, scale: float, zero_point: int, bits: int, qmin: int, qmax: int) -> None:
        self.scale = float(scale)
        self.zero_point = int(zero_point)
        self.bits = bits
        self.qmin = qmin
        self.qmax = qmax

    def __call__(self, module: nn.Module, inputs: tuple, output: torch.Tensor) -> torch.Tensor:
        scale = torch.tensor(self.scale, dtype=torch.float64)
        zero_point = torch.tensor(self.zero_point, dtype=torch.int32)
        codes = quantize_with(output, scale, zero_point, qmin=self.qmin, qmax=self.qmax)
        q = QuantizedTensor(
            codes, scale, zero_point, self.bits, None, self.qmin, self.qmax, output.dtype
        )
        return dequantize(q)

    def __repr__(self) -> str:
        return (
            f"ActivationFakeQuantize(scale={self.scale!r}, zero_point={self.zero_point}, "
            f"bits={self.bits})"
        )


class ActivationDynamicQuantize(ActivationHook):
    """Rounds a layer's floating input at run time, per token: one symmetric scale per row
    of features (``per_token_fake_quantize``), computed from that row alone. No calibration:
    this is what dynamic-activation int8 runtimes do before an int8 matrix product."""

    pre = True

    def __init__(self, bits: int) -> None:
        self.bits = int(bits)

    def __call__(self, module: nn.Module, args: tuple) -> tuple | None:  # type: ignore[override]
        if not args or not isinstance(args[0], torch.Tensor) or not args[0].is_floating_point():
            return None  # an Embedding's indices, or nothing to round
        axis = 1 if isinstance(module, _ConvNd) else -1
        return (per_token_fake_quantize(args[0], self.bits, axis), *args[1:])

    def __repr__(self) -> str:
        return f"ActivationDynamicQuantize(bits={self.bits})"


def per_token_fake_quantize(x: torch.Tensor, bits: int, feature_axis: int = -1) -> torch.Tensor:
    """``x`` rounded onto a symmetric ``bits`` grid with one scale per token: per index of
    every axis but ``feature_axis`` (a Linear's last axis, a convolution's channels), the
    scale is that row's largest magnitude over the features. Rounds half to even."""
    if x.dim() == 0 or x.numel() == 0:
        return x
    rows = x.movedim(feature_axis, -1)
    flat = rows.reshape(-1, rows.shape[-1])
    low, high = flat.amin(dim=1), flat.amax(dim=1)
    scale, zero_point = choose_qparams(low, high, bits=bits, symmetric=True)
    qmin, qmax = quant_range(bits, symmetric=True)
    rounded = fake_quantize_with(flat, scale, zero_point, qmin=qmin, qmax=qmax, axis=0)
    return rounded.reshape(rows.shape).movedim(-1, feature_axis)


class ActivationFloatCast(ActivationHook):
    """Rounds a layer's floating output to a float format at run time (``cast_activation``)."""

    def __init__(self, format: str) -> None:
        self.format = format

    def __call__(self, module: nn.Module, inputs: tuple, output: torch.Tensor) -> torch.Tensor:
        if not isinstance(output, torch.Tensor) or not output.is_floating_point():
            return output
        return cast_activation(output, self.format)

    def __repr__(self) -> str:
        return f"ActivationFloatCast(format={self.format!r})"


def cast_activation(x: torch.Tensor, fmt: str) -> torch.Tensor:
    """``x`` rounded to nearest even in ``fmt``, returned in ``x``'s dtype. fp8 scales the
    tensor first so its largest magnitude meets the format's (one scale, at run time)."""
    dtype = FLOAT_DTYPES[fmt]
    if not fmt.startswith("fp8"):
        return x.to(dtype).to(x.dtype)
    largest = torch.finfo(dtype).max
    amax = x.detach().abs().amax().float() if x.numel() else torch.tensor(0.0)
    scale = torch.clamp(amax / largest, min=torch.finfo(torch.float32).tiny)
    return ((x.float() / scale).clamp(-largest, largest).to(dtype).float() * scale).to(x.dtype)


class ActivationPrune(ActivationHook):
    """Zeroes every output value with ``|a| < beta * max|a|`` (max over this forward's output)."""

    def __init__(self, beta: float) -> None:
        self.beta = float(beta)

    def __call__(self, module: nn.Module, inputs: tuple, output: torch.Tensor) -> torch.Tensor:
        return prune_activations(output, self.beta)

    def __repr__(self) -> str:
        return f"ActivationPrune(beta={self.beta!r})"


def prune_activations(a: torch.Tensor, beta: float) -> torch.Tensor:
    """``a`` with every value of ``|a| < beta * max|a|`` set to exactly zero.

    The bound is compared exactly, as ``prune.threshold_mask`` compares weights: it is not
    rounded to ``a``'s dtype first.
    """
    if a.numel() == 0:
        return a
    magnitude = a.detach().abs()  # the mask is a constant: gradients flow through the kept values
    if magnitude.dtype not in (torch.float32, torch.float64):
        magnitude = magnitude.float()  # half-precision bounds cannot be nudged exactly
    keep = at_least(magnitude, beta * float(magnitude.amax()))
    return torch.where(keep, a, torch.zeros_like(a))


def at_least(values: torch.Tensor, bound: float) -> torch.Tensor:
    """``values >= bound`` exactly, for float32/float64 ``values`` and a Python float ``bound``."""
    if values.dtype == torch.float64:
        return values >= bound
    # Comparing float32 with a Python float rounds the bound to float32 first, which
    # may round it *down* and keep a value just below it. The smallest float32 that is
    # >= bound gives the exact answer without widening the tensor.
    rounded = torch.tensor(bound, dtype=values.dtype)
    if float(rounded) < bound:
        rounded = torch.nextafter(rounded, torch.tensor(math.inf, dtype=values.dtype))
    return values >= float(rounded)


ACTIVATION_HOOKS = (
    ActivationFakeQuantize,
    ActivationDynamicQuantize,
    ActivationFloatCast,
    ActivationPrune,
)
AnyActivationHook = (
    ActivationFakeQuantize | ActivationDynamicQuantize | ActivationFloatCast | ActivationPrune
)


def _hooks_on(module: nn.Module) -> list[ActivationHook]:
    return module.__dict__.get(_HOOKS_ATTR, [])


def add_activation_hook(module: nn.Module, hook: ActivationHook) -> RemovableHandle:
    """Register ``hook`` as a forward hook of ``module`` and record it with its handle.

    A hook object belongs to one module: pass a fresh one for each.
    """
    if not isinstance(hook, ActivationHook):
        raise TypeError(f"hook must be an ActivationHook, got {type(hook).__name__}")
    if hook.pre:
        handle = module.register_forward_pre_hook(hook)  # type: ignore[arg-type]
    else:
        handle = module.register_forward_hook(hook)
    hook._handle = handle
    module.__dict__[_HOOKS_ATTR] = [*_hooks_on(module), hook]
    return handle


def remove_activation_hooks(
    model: nn.Module, kinds: tuple[type[ActivationHook], ...] = ACTIVATION_HOOKS
) -> None:
    """Take every recorded activation hook of one of ``kinds`` off ``model``'s modules."""
    for module in model.modules():
        hooks = _hooks_on(module)
        if not hooks:
            continue
        for hook in hooks:
            if isinstance(hook, kinds):
                hook._handle.remove()
        kept = [hook for hook in hooks if not isinstance(hook, kinds)]
        if kept:
            module.__dict__[_HOOKS_ATTR] = kept
        else:
            del module.__dict__[_HOOKS_ATTR]  # as if no hook had ever been added


def activation_hooks(model: nn.Module) -> Iterator[tuple[str, AnyActivationHook]]:
    """(module name, hook) for every activation hook of ours, in the order they run."""
    for name, module in model.named_modules():
        for hook in _hooks_on(module):
            if isinstance(hook, ACTIVATION_HOOKS):
                yield name, hook
