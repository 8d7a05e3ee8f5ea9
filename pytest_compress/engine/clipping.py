"""The MSE rounding method: per channel or group, the clipping range with the least error.

Round to nearest over the full min/max range spends levels on rare outliers; shrinking
the range rounds the bulk more finely and clips the outliers. For each row that shares a
scale (a tensor, a channel or a group), ``mse_qparams`` tries the range ``[f * min, f *
max]`` for every shrink factor ``f`` in ``SHRINK_FACTORS`` and keeps the one whose
rounded weights are closest in squared error. It needs no data.
"""

from __future__ import annotations

import math

import torch

from .groups import group_rows, input_size
from .quant import choose_qparams, compute_qparams, fake_quantize_with, quant_range

# 1.0 (plain min/max) down to 0.5 in steps of 0.02: 26 candidates per row.
SHRINK_FACTORS = tuple(round(1 - 0.02 * i, 2) for i in range(26))


def _rows(x: torch.Tensor, axis: int | None, group_size: int | None) -> torch.Tensor:
    """``x`` as a matrix whose rows each share one scale."""
    if axis is None:
        return x.reshape(1, -1)
    if group_size is None:
        return x.movedim(axis, 0).reshape(x.shape[axis], -1)
    return group_rows(x, axis, group_size)


def _valid(
    x: torch.Tensor, rows: torch.Tensor, axis: int | None, group_size: int | None
) -> torch.Tensor | None:
    """1 for a row's real elements, 0 for the padding of a ragged last group (or None)."""
    if axis is None or group_size is None:
        return None
    inputs = input_size(x.shape, axis)
    tail = inputs - (math.ceil(inputs / group_size) - 1) * group_size
    if tail == group_size:
        return None
    valid = torch.ones_like(rows).reshape(x.shape[axis], -1, group_size)
    valid[:, -1, tail:] = 0
    return valid.reshape(rows.shape)


def mse_qparams(
    x: torch.Tensor,
    *,
    bits: int,
    symmetric: bool,
    axis: int | None,
    name: str,
    group_size: int | None = None,
    scale_dtype: torch.dtype | None = None,
) -> tuple[torch.Tensor, torch.Tensor, int | None]:
    """Like ``compute_qparams``, with each row's range shrunk by the best of
    ``SHRINK_FACTORS`` (ties keep the wider range)."""
    scale, zero_point, axis = compute_qparams(
        x,
        bits=bits,
        symmetric=symmetric,
        axis=axis,
        name=name,
        group_size=group_size,
        scale_dtype=scale_dtype,
    )
    if x.numel() == 0:
        return scale, zero_point, axis
    qmin, qmax = quant_range(bits, symmetric=symmetric)
    rows = _rows(x.detach(), axis, group_size)
    valid = _valid(x, rows, axis, group_size)
    low, high = rows.amin(dim=1), rows.amax(dim=1)

    def error(s: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        rounded = fake_quantize_with(rows, s, z, qmin=qmin, qmax=qmax, axis=0)
        squared = rounded.sub_(rows).float().square_()
        return (squared if valid is None else squared.mul_(valid)).sum(dim=1)

    best_scale, best_zero = scale.reshape(-1), zero_point.reshape(-1)
    best = error(best_scale, best_zero)
    for factor in SHRINK_FACTORS[1:]:
        s, z = choose_qparams(
            low * factor, high * factor, bits=bits, symmetric=symmetric, scale_dtype=scale_dtype
        )
        s = s.to(best_scale.dtype)
        err = error(s, z)
        better = err < best
        best = torch.where(better, err, best)
        best_scale = torch.where(better, s, best_scale)
        best_zero = torch.where(better, z, best_zero)
    return best_scale.reshape(scale.shape), best_zero.reshape(zero_point.shape), axis
