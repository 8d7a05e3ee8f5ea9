"""Run-time activation compression: forward hooks that fake-quantize or prune a layer's output.

The hooks are small callable objects (not closures) so ``copy.deepcopy`` copies them
with their module and ``save_compressed`` can find and store them.
"""

from __future__ import annotations

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
    """``a`` with every value of ``|a| < beta * max|a|`` set to exactly zero."""
    if a.numel() == 0:
        return a
    magnitude = a.abs()
    return torch.where(magnitude < beta * magnitude.amax(), torch.zeros_like(a), a)


ACTIVATION_HOOKS = (ActivationFakeQuantize, ActivationPrune)


def activation_hooks(
    model: nn.Module,
) -> Iterator[tuple[str, ActivationFakeQuantize | ActivationPrune]]:
    """(module name, hook) for every activation hook of ours, in the order they run."""
    for name, module in model.named_modules():
        for hook in module._forward_hooks.values():
            if isinstance(hook, ACTIVATION_HOOKS):
                yield name, hook
