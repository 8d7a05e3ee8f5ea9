"""The encoder's view of a tensor (``stream.Elements``): raw bytes, or narrow codes.

A quantized tensor's "zero" elements are those equal to their channel's (or group's) zero
point; the flags are computed a chunk of whole rows at a time against the rows' zero
points, so no per-element zero-point array of the whole tensor is built (except for the
rare group-wise layout along an axis other than 0).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch

from ..engine.groups import per_element
from ..engine.record import QuantParams
from .stream import Elements

# float dtypes numpy reads as they are (bfloat16 and the fp8 formats it has not)
NUMPY_FLOATS = (torch.float16, torch.float32, torch.float64)


def raw_elements(t: torch.Tensor) -> Elements:
    """``t``'s elements stored as raw bytes; a float counts as zero by value (``-0.0`` too,
    as multiplying by a mask leaves it)."""
    flat = t.detach().cpu().contiguous().reshape(-1)
    rows = flat.view(torch.uint8).numpy().reshape(flat.numel(), t.element_size())
    # numpy compares a chunk in place of the tensor's memory; torch's comparison of the
    # same chunk allocates its result and costs about three times as much
    floats = flat.numpy() if type(flat) is torch.Tensor and flat.dtype in NUMPY_FLOATS else None

    def nonzero(start: int, stop: int) -> np.ndarray:
        if floats is not None:
            return floats[start:stop] != 0
        if flat.is_floating_point() or flat.is_complex():
            return (flat[start:stop] != 0).numpy()
        return np.asarray(rows[start:stop].any(1))

    def values(index: slice | np.ndarray) -> np.ndarray:
        return rows[index]

    return Elements(flat.numel(), 8 * t.element_size(), nonzero, values, packed=False)


def quantized_elements(
    codes: torch.Tensor, zero_point: torch.Tensor, params: QuantParams, axis: int | None
) -> Elements:
    """Narrow codes (``codes - qmin``) and their zero points (``z - qmin``), per ``params``."""
    flat = codes.reshape(-1).numpy()
    shape = tuple(codes.shape)
    row, zeros = _row_zero_points(zero_point.to(torch.int32), shape, params, axis)

    def at_zero(start: int, stop: int) -> np.ndarray:
        if row == 1:  # per element: a channel's zero point as a flat (n,), never (n, 1)
            return flat[start:stop] == zeros(start, stop).reshape(-1)
        block = flat[start:stop].reshape(-1, row)
        return (block == zeros(start // row, stop // row)).reshape(-1)

    def nonzero(start: int, stop: int) -> np.ndarray:
        return ~at_zero(start, stop)

    def kept(start: int, stop: int) -> int:
        # counting the (few) zeros skips inverting the flags: the plan's whole cost
        return stop - start - int(np.count_nonzero(at_zero(start, stop)))

    def values(index: slice | np.ndarray) -> np.ndarray:
        return flat[index]

    return Elements(flat.size, params.bits, nonzero, values, packed=True, row=row, kept=kept)


def _row_zero_points(
    zero_point: torch.Tensor, shape: tuple[int, ...], params: QuantParams, axis: int | None
) -> tuple[int, Callable[[int, int], np.ndarray]]:
    """(row length, zero points of rows [a, b) broadcastable to (rows, row)); a row of 1
    means per element: the function then takes element bounds."""
    zp = zero_point.numpy()
    if axis is None:
        scalar = zp.reshape(-1)[:1]
        return 1, lambda start, stop: scalar
    channels = shape[axis]
    if params.group_size is None:
        inner = math.prod(shape[axis + 1 :])
        per_channel = zp.reshape(-1)
        return inner, lambda a, b: per_channel[np.arange(a, b) % channels][:, None]
    if axis == 0:
        inputs = math.prod(shape[1:])
        groups = zp.reshape(channels, -1)
        size = params.group_size
        return inputs, lambda a, b: np.repeat(groups[a:b], size, axis=1)[:, :inputs]
    spread = per_element(zero_point, shape, axis, params.group_size).reshape(-1).numpy()
    return 1, lambda start, stop: spread[start:stop]
