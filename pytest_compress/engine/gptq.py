"""GPTQ: round a layer's weight column by column, compensating each column's rounding
error on the columns not yet rounded, weighted by the inverse Hessian of its inputs.

Frantar et al., "GPTQ: Accurate Post-Training Quantization for Generative Pre-trained
Transformers" (2022). The weight is a (rows, inputs) matrix (a convolution's inputs are
its unfolded patches, per group of channels). With ``H = 2 X^T X / n`` damped by 1 % of
its mean diagonal, and ``U`` the upper Cholesky factor of ``H^-1``, column ``i`` is
rounded to ``q``, and the rest of each row moves by ``-(w_i - q) / U_ii * U_i,i+1:``.
Columns go in blocks of 128: inside a block the updates are applied one column at a
time, to the rest of the weight once per block (one matrix product). Scales are each
row's min/max (per channel) or, group-wise, each group's min/max when its first column
is reached (so they see the compensated weights). Exact zeros (pruned weights) stay
zero: they are masked again after every update.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..errors import ModelError
from .layers import Layer, is_transformers_conv1d
from .quant import choose_qparams, fake_quantize_with, quant_range
from .record import QuantParams

BLOCK = 128
DAMPING = 0.01  # of the mean of H's diagonal, added to it
_MAX_DAMPING_TRIES = 6  # each multiplies the damping by 10


def _as_matrices(module: nn.Module, weight: torch.Tensor) -> torch.Tensor:
    """The weight as float32 (groups, rows, inputs) matrices: rows are output channels."""
    if is_transformers_conv1d(module):
        return weight.t().to(torch.float32).unsqueeze(0).clone()
    groups = getattr(module, "groups", 1)
    return weight.reshape(groups, weight.shape[0] // groups, -1).to(torch.float32).clone()


def _from_matrices(module: nn.Module, matrices: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    if is_transformers_conv1d(module):
        return matrices[0].t().contiguous()
    return matrices.reshape(shape)


def upper_inverse_cholesky(hessian: torch.Tensor, name: str) -> torch.Tensor:
    """The upper Cholesky factor of the damped ``H^-1``, batched over groups.

    An input that never varied (a zero diagonal) gets 1 there, so it is rounded without
    compensation. A Hessian that is still not positive definite gets 10 times the damping.
    """
    h = hessian.clone()
    diagonal = h.diagonal(dim1=-2, dim2=-1)
    diagonal[diagonal == 0] = 1.0
    damping = DAMPING * diagonal.mean(dim=-1, keepdim=True)
    eye = torch.eye(h.shape[-1], dtype=h.dtype)
    for _ in range(_MAX_DAMPING_TRIES):
        lower, info = torch.linalg.cholesky_ex(h + damping.unsqueeze(-1) * eye)
        if not bool(info.any()):
            upper, info = torch.linalg.cholesky_ex(torch.cholesky_inverse(lower), upper=True)
            if not bool(info.any()):
                return upper
        damping = damping * 10
    raise ModelError(f"GPTQ: the Hessian of {name}'s inputs is not positive definite")


class _Grid:
    """The rounding of one column: per-row scales, and group-wise the current group's."""

    def __init__(self, bits: int, symmetric: bool, scale_dtype: torch.dtype | None) -> None:
        self.bits, self.symmetric, self.scale_dtype = bits, symmetric, scale_dtype
        self.qmin, self.qmax = quant_range(bits, symmetric=symmetric)
        self.scale = self.zero_point = torch.empty(0)

    def fit(self, block: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Scales and zero points (groups, rows) of the min/max range of ``block``'s rows."""
        self.scale, self.zero_point = choose_qparams(
            block.amin(dim=-1),
            block.amax(dim=-1),
            bits=self.bits,
            symmetric=self.symmetric,
            scale_dtype=self.scale_dtype,
        )
        return self.scale, self.zero_point

    def round(self, column: torch.Tensor) -> torch.Tensor:
        return fake_quantize_with(
            column.reshape(-1),
            self.scale.reshape(-1),
            self.zero_point.reshape(-1),
            qmin=self.qmin,
            qmax=self.qmax,
            axis=0,
        ).reshape(column.shape)


def gptq_matrices(
    w: torch.Tensor, upper: torch.Tensor, grid: _Grid, group_size: int | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """GPTQ on (groups, rows, inputs) ``w`` (updated in place); the rounded weights and the
    scales and zero points, (groups, rows) or group-wise (groups, rows, groups of inputs)."""
    inputs = w.shape[-1]
    keep = (w != 0) if bool((w == 0).any()) else None
    if group_size is None:
        scales, zeros = (t.unsqueeze(-1) for t in grid.fit(w))
    else:
        count = math.ceil(inputs / group_size)
        scales = torch.empty((*w.shape[:2], count), dtype=grid.fit(w[..., :1])[0].dtype)
        zeros = torch.empty((*w.shape[:2], count), dtype=torch.int32)
    rounded = torch.zeros_like(w)
    for start in range(0, inputs, BLOCK):
        end = min(start + BLOCK, inputs)
        block, errors = w[..., start:end].clone(), torch.zeros_like(w[..., start:end])
        u = upper[:, start:end, start:end]
        for i in range(end - start):
            column = start + i
            if group_size is not None and column % group_size == 0:
                ahead = torch.cat([block[..., i:], w[..., end : column + group_size]], dim=-1)
                g = column // group_size
                scales[..., g], zeros[..., g] = grid.fit(ahead[..., :group_size])
            q = grid.round(block[..., i])
            error = (block[..., i] - q) / u[:, i, i].unsqueeze(-1)
            block[..., i:] -= error.unsqueeze(-1) * u[:, i, i:].unsqueeze(1)
            if keep is not None:
                block[..., i:] *= keep[..., start + i : end]
            rounded[..., column], errors[..., i] = q, error
        w[..., end:] -= errors @ upper[:, start:end, end:]
        if keep is not None:
            w[..., end:] *= keep[..., end:]
    return rounded, scales, zeros


def gptq_layer(
    layer: Layer,
    hessian: torch.Tensor,
    *,
    bits: int,
    symmetric: bool,
    group_size: int | None,
    scale_dtype: torch.dtype | None,
) -> tuple[torch.Tensor, QuantParams]:
    """``layer``'s weight rounded by GPTQ (in its dtype) and the mapping that produced it."""
    weight = layer.module.weight.detach()
    w = _as_matrices(layer.module, weight)
    grid = _Grid(bits, symmetric, scale_dtype)
    upper = upper_inverse_cholesky(hessian.to(torch.float32), layer.weight_name)
    rounded, scales, zeros = gptq_matrices(w, upper, grid, group_size)
    channels = weight.shape[layer.output_axis]
    shape = (channels,) if group_size is None else (channels, scales.shape[-1])
    scale, zero_point = scales.reshape(shape), zeros.reshape(shape)
    values = _from_matrices(layer.module, rounded, weight.shape).to(weight.dtype)
    # Snapped onto the grid in the weight's own dtype, exactly as the record replays it.
    values = fake_quantize_with(
        values,
        scale,
        zero_point,
        qmin=grid.qmin,
        qmax=grid.qmax,
        axis=layer.output_axis,
        group_size=group_size,
    )
    params = QuantParams(
        scale, zero_point, bits, layer.output_axis, grid.qmin, grid.qmax, group_size
    )
    return values, params
