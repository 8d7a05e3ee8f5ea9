"""A tensor's blob decoded a block at a time, straight into the tensor that receives it.

The loader's counterpart of ``stream.py``. Decoding a blob whole costs int64 positions,
widened codes, a zero point per element and float32 values, several times the tensor
itself; here a block of about ``BLOCK`` elements at a time is unpacked from the blob, its
scales and zero points looked up by row, and its values written into the destination in
its own dtype (a bfloat16 weight never gets a float32 copy of the whole). Every value is
computed as ``quant.dequantize`` and ``FloatParams.decode`` compute it, so the loaded
tensor is bit for bit what decoding the whole would give.

Blocks come in two shapes:

- runs: a dense tensor whose elements share one scale per run of consecutive elements
  (per tensor, per channel, group-wise along axis 0 with whole groups), decoded as
  (runs, run length) blocks against one scale per run, with no index at all;
- positions: a sparse layout's stored elements (or a dense tensor of any other
  arrangement), decoded with each element's own scale found from its flat position.

Everything a block needs is checked as it is read; a bad value raises ``FileFormatError``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import torch

from ..errors import FileFormatError
from .encoding import Layout, check_padding, unpack_range

BLOCK = 1 << 18  # elements per block: a megabyte of float32, small enough to stay in cache


def _bad(message: str) -> FileFormatError:
    return FileFormatError(message)


@dataclass(frozen=True)
class Scales:
    """Which scale each flat element of a tensor uses, and how the run layout finds it.

    ``channels`` along an axis with ``inner`` elements per channel run (1 and the element
    count for one scale per tensor), and ``groups`` of ``group_size`` inputs per channel
    for group-wise scales (stored (channels, groups), inputs in memory order).
    """

    numel: int
    channels: int
    inner: int
    groups: int = 1
    group_size: int | None = None

    @classmethod
    def of(cls, shape: tuple[int, ...], axis: int | None, group_size: int | None) -> Scales:
        numel = math.prod(shape)
        if axis is None:
            return cls(numel, 1, max(1, numel))
        inner = math.prod(shape[axis + 1 :])
        if group_size is None:
            return cls(numel, shape[axis], max(1, inner))
        inputs = numel // shape[axis] if shape[axis] else 0
        groups = math.ceil(inputs / group_size) if inputs else 0
        return cls(numel, shape[axis], max(1, inner), groups, group_size)

    @property
    def run(self) -> int | None:
        """Consecutive elements sharing one scale, run ``r`` using scale ``r % count``;
        None when no such runs exist (ragged groups, or groups along a later axis)."""
        if self.group_size is None:
            return self.inner
        whole = self.channels * self.inner == self.numel  # channels first: axis 0
        if whole and self.inner % self.group_size == 0:
            return self.group_size
        return None

    @property
    def count(self) -> int:
        return self.channels * self.groups

    def index(self, positions: np.ndarray) -> np.ndarray:
        """The scale of each flat position: its channel, and within it its group."""
        channel = _divided(positions, self.inner)
        if self.channels * self.inner != self.numel:  # channels repeat: not along axis 0
            channel %= self.channels
        if self.group_size is None:
            return channel
        outer, within = np.divmod(positions, self.channels * self.inner)
        inputs = outer * self.inner + within % self.inner
        return channel * self.groups + inputs // self.group_size


def _divided(positions: np.ndarray, by: int) -> np.ndarray:
    """``positions // by``; a shift for a power of two (int64 division is slow)."""
    if by & (by - 1) == 0:
        return positions >> (by.bit_length() - 1)
    return positions // by


def _gathered(values: torch.Tensor, index: np.ndarray) -> torch.Tensor:
    """``values[index]`` (numpy's take: several times torch's indexing on one thread)."""
    return torch.from_numpy(values.numpy().take(index))


@dataclass(frozen=True)
class Block:
    """Elements ``start .. stop`` of the stored stream: at flat ``positions`` (None: the
    dense range ``start .. stop`` itself), each run of ``run`` using scale ``scales``."""

    start: int
    stop: int
    positions: np.ndarray | None
    scales: np.ndarray  # scale index per run (dense) or per element (positions)
    run: int


def dense_blocks(scales: Scales) -> Iterator[Block]:
    """A dense tensor in blocks of whole runs (or of one long run's pieces)."""
    numel, run = scales.numel, scales.run
    if run is None:
        for start in range(0, numel, BLOCK):
            stop = min(start + BLOCK, numel)
            positions = np.arange(start, stop, dtype=np.int64)
            yield Block(start, stop, positions, scales.index(positions), 1)
        return
    count = max(1, scales.count)
    if run <= BLOCK:
        step = max(1, BLOCK // run) * run
        for start in range(0, numel, step):
            stop = min(start + step, numel)
            first = start // run
            index = np.arange(first, first + (stop - start) // run, dtype=np.int64) % count
            yield Block(start, stop, None, index, run)
        return
    for first in range(0, numel, run):  # a run longer than a block: pieces of one scale
        index = np.array([(first // run) % count], dtype=np.int64)
        for start in range(first, first + run, BLOCK):
            stop = min(start + BLOCK, first + run)
            yield Block(start, stop, None, index, stop - start)


def sparse_blocks(
    index: np.ndarray, layout: Layout, scales: Scales, stored: int
) -> Iterator[Block]:
    """The stored elements of a mask or gaps layout with their flat positions, a block
    at a time; ``FileFormatError`` when the index disagrees with ``stored``."""
    numel = scales.numel
    if layout.name == "mask":
        check_padding(index, 1, numel)
        marked = int(np.bitwise_count(index).sum(dtype=np.int64))
        if marked != stored:
            raise _bad(f"the mask marks {marked} elements, the header says {stored}")
        done = 0
        for start in range(0, numel, BLOCK):
            flags = unpack_range(index, 1, start, min(BLOCK, numel - start))
            positions = np.flatnonzero(flags) + start
            yield Block(done, done + positions.size, positions, scales.index(positions), 1)
            done += positions.size
        return
    check_padding(index, layout.gap_bits, stored)
    previous = -1
    for start in range(0, stored, BLOCK):
        gaps = unpack_range(index, layout.gap_bits, start, min(BLOCK, stored - start))
        positions = np.cumsum(gaps.astype(np.int64) + 1) + previous
        if positions[-1] >= numel:
            raise _bad(f"the gaps run to element {positions[-1]}, past the {numel} elements")
        previous = int(positions[-1])
        yield Block(start, start + positions.size, positions, scales.index(positions), 1)


def blocks(index: np.ndarray, layout: Layout, scales: Scales, stored: int) -> Iterator[Block]:
    if layout.name == "dense":
        return dense_blocks(scales)
    return sparse_blocks(index, layout, scales, stored)


# A block's values, given the dense block's slice of the destination to write them into
# when they can go there directly (returned then); they come back (runs, run) or flat.
Values = Callable[[Block, torch.Tensor | None], torch.Tensor]


def fill(dest: torch.Tensor, layout: Layout, parts: Iterator[Block], values: Values) -> None:
    """Write every block's values into ``dest`` (contiguous, cast to its dtype); a sparse
    layout's elements that are not stored are zero (0.0, +0.0 for a float left out as
    -0.0)."""
    flat = dest.view(-1)
    if layout.name != "dense":
        flat.zero_()
    for block in parts:
        if block.stop == block.start:
            continue
        if block.positions is None:
            target = flat[block.start : block.stop].view(-1, block.run)
            out = values(block, target)
            if out is not target:
                target.copy_(out.view(target.shape))
        else:
            flat[torch.from_numpy(block.positions)] = values(block, None).to(flat.dtype)


# --- integer codes ------------------------------------------------------------------------


@dataclass(frozen=True)
class Codes:
    """A quantized tensor's packed codes (``codes - qmin``) and its per-scale parameters
    in the compute dtype (``quant.scale_dtype_for``): scale and ``zero point - qmin``."""

    raw: np.ndarray
    bits: int
    qmin: int
    qmax: int
    scale: torch.Tensor
    zero: torch.Tensor
    dtype: torch.dtype  # the tensor's
    scales: Scales

    @cached_property
    def clamp(self) -> bool:
        """Whether a value can pass the dtype's largest finite one (``quant._values``
        saturates it there); if not, the clamp changes nothing and is skipped."""
        if not self.scale.numel():
            return False
        bound = (self.qmax - self.qmin) * float(self.scale.max()) * (1 + 2**-20)
        return bound >= torch.finfo(self.dtype).max

    def __call__(self, block: Block, target: torch.Tensor | None) -> torch.Tensor:
        """``(codes - z) * s`` of the block clamped to the dtype's range (in the compute
        dtype, into ``target`` when that is the dtype), exactly as ``quant._values``."""
        codes = unpack_range(self.raw, self.bits, block.start, block.stop - block.start)
        span = self.qmax - self.qmin  # the largest stored code; all of them at full width
        if (1 << self.bits) - 1 > span and codes.size and int(codes.max()) > span:
            raise _bad(f"a code exceeds qmax {self.qmax}")
        wide = torch.from_numpy(codes if codes.dtype == np.uint8 else codes.astype(np.int32))
        shape = (-1, 1) if block.positions is None else (-1,)
        s, z = _gathered(self.scale, block.scales).view(shape), _gathered(self.zero, block.scales)
        z = z.view(shape)
        if block.positions is not None:
            real = torch.sub(wide, z)
        elif target is not None and target.dtype == self.scale.dtype:
            # widened by the copy, then subtracted: the same float values as torch.sub's
            # promotion, in passes that vectorise (a mixed-dtype sub does not)
            real = target.copy_(wide.view(target.shape)).sub_(z)
        else:
            real = torch.sub(wide.view(-1, block.run), z)
        real.mul_(s)
        if self.clamp:
            largest = torch.finfo(self.dtype).max
            real.clamp_(-largest, largest)
        return real


def decode_codes(
    dest: torch.Tensor, index: np.ndarray, layout: Layout, stored: int, codes: Codes
) -> None:
    """Codes decoded into ``dest``; the blob's unused trailing bits must be zero."""
    check_padding(codes.raw, codes.bits, stored)
    scales = codes.scales
    fill(dest, layout, blocks(index, layout, scales, stored), codes)


# --- float formats and raw elements --------------------------------------------------------


@dataclass(frozen=True)
class Elements:
    """Stored elements of a float format (``element`` dtype), times a float32 scale per
    channel for fp8 (``scale`` None: cast as they are)."""

    raw: np.ndarray  # (stored, itemsize) bytes
    element: torch.dtype
    scale: torch.Tensor | None
    name: str

    def __call__(self, block: Block, target: torch.Tensor | None) -> torch.Tensor:
        rows = torch.from_numpy(self.raw[block.start : block.stop].reshape(-1))
        stored = rows.view(self.element)
        wide = stored.to(torch.float32)
        if not bool(torch.isfinite(wide).all()):
            raise _bad(f"{self.name} elements must be finite")
        if self.scale is None:
            out = stored  # cast by the destination's copy, as ``stored.to(dtype)``
        else:
            shape = (-1, 1) if block.positions is None else (-1,)
            out = wide.view(-1, block.run) if block.positions is None else wide
            out = out.mul_(_gathered(self.scale, block.scales).view(shape))
        return out


def decode_raw(
    dest: torch.Tensor, index: np.ndarray, values: np.ndarray, layout: Layout, stored: int
) -> None:
    """Raw element bytes into ``dest``; a bool must hold 0 or 1."""
    itemsize = dest.element_size()
    rows = values.reshape(stored, itemsize)
    if dest.dtype == torch.bool and rows.size and int(rows.max()) > 1:
        raise _bad("a bool tensor holds bytes other than 0 and 1")
    numel = dest.numel()
    target = dest.view(-1).view(torch.uint8).view(numel, itemsize).numpy()
    if layout.name == "dense":
        target[...] = rows
        return
    target[...] = 0
    scales = Scales(numel, 1, max(1, numel))
    for block in sparse_blocks(index, layout, scales, stored):
        target[block.positions] = rows[block.start : block.stop]
