"""What GPTQ needs from the data: each layer's input second moment, H = 2 X^T X / n.

Forward hooks on the selected layers of the (float, possibly pruned) copy see every
calibration batch once; each layer's inputs become the rows ``X`` its weight multiplies:
a Linear's input vectors (real tokens only when the batch has an ``attention_mask``), a
convolution's unfolded patches (``in_channels / groups x kh x kw`` per output position,
per group of channels). All layers are observed in one pass, so GPTQ sees the inputs of
the float model rather than of the partly quantized one: a deliberate simplification of
the sequential reference that costs one pass over the data.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import CalibrationError
from .batches import observe
from .layers import Layer, is_transformers_conv1d

# Patches unfolded at once: a large image batch is unfolded a few samples at a time.
_UNFOLD_ELEMENTS = 1 << 25


def gptq_supported(module: nn.Module) -> bool:
    """Layers GPTQ rounds: Linear, transformers' Conv1D, Conv1d and Conv2d."""
    return isinstance(module, (nn.Linear, nn.Conv1d, nn.Conv2d)) or is_transformers_conv1d(module)


def _patches(module: nn.Conv1d | nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """The unfolded inputs of a convolution: (groups, patches, in/groups * kernel)."""
    pad: tuple[int, ...] = tuple(module._reversed_padding_repeated_twice)
    if isinstance(module, nn.Conv1d):
        x, kernel = x.unsqueeze(-2), (1, module.kernel_size[0])
        stride, dilation = (1, module.stride[0]), (1, module.dilation[0])
        pad = (*pad, 0, 0)
    else:
        kernel = cast(tuple[int, int], module.kernel_size)
        stride = cast(tuple[int, int], module.stride)
        dilation = cast(tuple[int, int], module.dilation)
    mode = "constant" if module.padding_mode == "zeros" else module.padding_mode
    groups = module.groups
    chunks = []
    step = max(1, _UNFOLD_ELEMENTS // max(1, x[0].numel() * kernel[0] * kernel[1]))
    for start in range(0, x.shape[0], step):
        chunk = x[start : start + step]
        padded = F.pad(chunk, pad, mode=mode) if any(pad) else chunk
        cols = F.unfold(padded, kernel, dilation=dilation, stride=stride)  # (N, C*k, L)
        n, _, positions = cols.shape
        cols = cols.reshape(n, groups, -1, positions).permute(1, 0, 3, 2)
        chunks.append(cols.reshape(groups, n * positions, -1))
    return torch.cat(chunks, dim=1)


def layer_inputs(module: nn.Module, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """The rows a layer's weight multiplies, as float32 (groups, rows, inputs)."""
    x = x.detach().to(torch.float32)
    if isinstance(module, (nn.Conv1d, nn.Conv2d)):
        unbatched = x.dim() == (2 if isinstance(module, nn.Conv1d) else 3)
        return _patches(module, x.unsqueeze(0) if unbatched else x)
    if mask is not None and x.dim() >= 3 and tuple(x.shape[:2]) == tuple(mask.shape):
        x = x[mask.to(x.device)]
    return x.reshape(1, -1, x.shape[-1])


class HessianCollector:
    """A forward hook summing ``X^T X`` of a layer's inputs over the calibration batches."""

    def __init__(self) -> None:
        self.total: torch.Tensor | None = None
        self.rows = 0
        self.mask: torch.Tensor | None = None  # the batch's padding mask, set by the loop

    def __call__(self, module: nn.Module, args: tuple, output: object) -> None:
        if not args or not isinstance(args[0], torch.Tensor):
            return
        x = layer_inputs(module, args[0], self.mask)
        product = x.transpose(1, 2) @ x
        self.total = product if self.total is None else self.total.add_(product)
        self.rows += x.shape[1]

    def hessian(self) -> torch.Tensor | None:
        """``2 X^T X / n`` (groups, inputs, inputs), or None when no rows were seen."""
        if self.total is None or self.rows == 0:
            return None
        return self.total * (2.0 / self.rows)


def hessians(
    model: nn.Module, layers: list[Layer], calibration_data: Iterable[Any]
) -> dict[str, torch.Tensor]:
    """Each GPTQ-supported layer's Hessian by layer name, from one pass over the data in
    eval mode; ``CalibrationError`` naming the layers the data never reached."""
    collectors = {
        layer.name: HessianCollector() for layer in layers if gptq_supported(layer.module)
    }
    modules = {layer.name: layer.module for layer in layers}
    watchers: dict[nn.Module, Any] = {modules[name]: c for name, c in collectors.items()}
    observe(model, watchers, calibration_data, "GPTQ's Hessians")
    found = {name: c.hessian() for name, c in collectors.items()}
    missing = [name for name, h in found.items() if h is None]
    if missing:
        raise CalibrationError(
            f"method='gptq' needs each layer's inputs, but {missing} never ran on the "
            f"calibration data; pass data that runs them, or leave them out with "
            f"QuantSpec(exclude={missing!r})"
        )
    return {name: h for name, h in found.items() if h is not None}
