"""Rows that share one scale: a tensor, its output channels, or groups of their inputs.

Group-wise quantization gives each run of ``group_size`` consecutive weights along an
output channel's inputs its own scale and zero point. The input dimension is everything
but the channel axis, flattened in memory order (a conv weight's ``in_channels / groups x
kh x kw``). Viewing the groups as the rows of a matrix turns group-wise quantization into
per-row (per-channel along axis 0) quantization, so one set of kernels serves both.
"""

from __future__ import annotations

import math

import torch


def input_size(shape: tuple[int, ...] | torch.Size, axis: int) -> int:
    """The number of inputs each output channel along ``axis`` has (every other axis)."""
    return math.prod(n for i, n in enumerate(shape) if i != axis)


def group_count(shape: tuple[int, ...] | torch.Size, axis: int, group_size: int) -> int:
    """Groups per output channel: the last one may be shorter (a ragged group)."""
    return math.ceil(input_size(shape, axis) / group_size)


def group_rows(x: torch.Tensor, axis: int, group_size: int) -> torch.Tensor:
    """``x`` as a (channels * groups, group_size) matrix, one group per row.

    A ragged last group is padded by repeating its last element: that changes neither its
    minimum nor its maximum, and ``ungroup_rows`` drops the padding again.
    """
    channels, inputs = x.shape[axis], input_size(x.shape, axis)
    flat = x.movedim(axis, 0).reshape(channels, inputs)
    groups = math.ceil(inputs / group_size)
    pad = groups * group_size - inputs
    if pad:
        flat = torch.cat([flat, flat[:, -1:].expand(channels, pad)], dim=1)
    return flat.reshape(channels * groups, group_size)


def ungroup_rows(
    rows: torch.Tensor, shape: tuple[int, ...] | torch.Size, axis: int
) -> torch.Tensor:
    """The inverse of ``group_rows``: a tensor of ``shape`` (contiguous), padding dropped."""
    channels, inputs = shape[axis], input_size(shape, axis)
    if channels == 0 or inputs == 0:
        return rows.new_empty(tuple(shape))
    flat = rows.reshape(channels, -1)[:, :inputs]
    moved = (channels, *shape[:axis], *shape[axis + 1 :])
    return flat.reshape(moved).movedim(0, axis).contiguous()


def per_element(
    per_group: torch.Tensor, shape: tuple[int, ...] | torch.Size, axis: int, group_size: int
) -> torch.Tensor:
    """A (channels, groups) tensor spread to every element of a tensor of ``shape``."""
    channels = shape[axis]
    if math.prod(shape) == 0:
        return per_group.new_empty(tuple(shape))
    rows = per_group.reshape(channels, -1, 1).expand(-1, -1, group_size)
    return ungroup_rows(rows, shape, axis)
