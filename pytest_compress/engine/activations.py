"""Run-time activation compression: forward hooks that fake-quantize or prune a layer's output.

The hooks are small callable objects (not closures) so ``copy.deepcopy`` copies them
with their module and ``save_compressed`` can find and store them.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
from torch import nn

from .quant import QuantizedTensor, dequantize, quantize_with


class ActivationFakeQuantize:
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


class ActivationPrune:
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


ACTIVATION_HOOKS = (ActivationFakeQuantize, ActivationPrune)


def activation_hooks(
    model: nn.Module,
) -> Iterator[tuple[str, ActivationFakeQuantize | ActivationPrune]]:
    """(module name, hook) for every activation hook of ours, in the order they run."""
    for name, module in model.named_modules():
        for hook in module._forward_hooks.values():
            if isinstance(hook, ACTIVATION_HOOKS):
                yield name, hook
