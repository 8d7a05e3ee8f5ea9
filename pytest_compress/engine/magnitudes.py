"""The cut of magnitude pruning, found block by block: no copy of every |w| in float32.

Pruning exactly the ``k`` smallest ``|w|`` across several tensors (ties at the cut in
concatenation order: earlier tensor first, then lower flat index) needs the k-th smallest
magnitude and, at the cut, how many of the equal ones go. Both come from passes that read
each tensor in blocks of ``BLOCK_ELEMENTS`` and widen only the block to float32 (float64
when a tensor is float64), so memory stays a few blocks whatever the tensors' sizes and
dtypes; a bfloat16 model is never widened whole.

The k-th value is bracketed between two quantiles of a strided sample, the elements
strictly inside the bracket (a few percent) are selected exactly, and a sample that
misleads (periodic data) falls back to bisecting on the values' bit patterns with one
counting pass per bit: exact either way, only the time differs.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from .quant import BLOCK_ELEMENTS

# Size of the strided sample that brackets the k-th smallest value.
SAMPLE = 1 << 16


@dataclass(frozen=True)
class Cut:
    """One tensor's rule: prune ``|w| < value`` and the first ``ties`` elements (in flat
    order) with ``|w| == value``; keep the rest. ``value`` None: keep everything, or with
    ``ties`` -1 prune everything."""

    value: float | None
    ties: int = 0
    all_ties: bool = False  # every |w| == value is pruned: no running count needed


def magnitude_dtype(weights: Sequence[torch.Tensor]) -> torch.dtype:
    """float64 if any tensor is float64, else float32 (half formats widen exactly)."""
    return torch.float64 if any(w.dtype == torch.float64 for w in weights) else torch.float32


def flat(weight: torch.Tensor) -> torch.Tensor:
    """``weight`` as a flat view (a copy only when it is not contiguous)."""
    return weight.detach().reshape(-1)


def magnitude_blocks(
    weight: torch.Tensor, dtype: torch.dtype, buffer: torch.Tensor | None = None
) -> Iterator[tuple[int, torch.Tensor]]:
    """(start, |block| in ``dtype``) over ``weight``'s flat elements, each block written
    into one buffer (``buffer``, of ``dtype`` on the weight's device and at least a block
    long, or a new one): valid until the next is yielded. A new tensor per block would
    leave holes the allocator cannot return: small arrays kept meanwhile (the elements
    inside a cut's bracket) land in them, and a global cut of 50 M weights grew by 0.9x
    their bytes; a pass over many tensors that keeps such arrays passes one ``buffer``."""
    values = flat(weight)
    count = values.numel()
    if buffer is None:
        buffer = torch.empty(min(BLOCK_ELEMENTS, count), dtype=dtype, device=weight.device)
    for start in range(0, count, BLOCK_ELEMENTS):
        piece = values[start : start + BLOCK_ELEMENTS]
        block = buffer[: piece.numel()]
        if piece.dtype == dtype:
            torch.abs(piece, out=block)
        else:  # widened exactly, then made positive in place
            block.copy_(piece).abs_()
        yield start, block


def cuts(weights: Sequence[torch.Tensor], k: int) -> list[Cut]:
    """Each tensor's ``Cut`` when the ``k`` smallest ``|w|`` across all of them are pruned."""
    total = sum(w.numel() for w in weights)
    if k <= 0:
        return [Cut(None) for _ in weights]
    if k >= total:
        return [Cut(None, -1) for _ in weights]
    dtype = magnitude_dtype(weights)
    value, found = kth_smallest(weights, k, dtype)
    if found is None:  # count below and at the cut per tensor: one more pass
        found = [
            (
                sum(int(torch.count_nonzero(b < value)) for _, b in magnitude_blocks(w, dtype)),
                sum(int(torch.count_nonzero(b == value)) for _, b in magnitude_blocks(w, dtype)),
            )
            for w in weights
        ]
    needed = k - sum(below for below, _ in found)  # ties to prune, earliest first
    out = []
    for _, n_equal in found:
        quota = min(needed, n_equal)
        needed -= quota
        out.append(Cut(value, quota, quota == n_equal))
    return out


def keep_blocks(weight: torch.Tensor, cut: Cut) -> Iterator[tuple[int, torch.Tensor]]:
    """(start, keep-mask of the block) over ``weight``'s flat elements, by ``cut``."""
    if cut.value is None:
        values = flat(weight)
        for start in range(0, values.numel(), BLOCK_ELEMENTS):
            size = min(BLOCK_ELEMENTS, values.numel() - start)
            yield start, torch.full((size,), cut.ties == 0, dtype=torch.bool, device=weight.device)
        return
    dtype = torch.float64 if weight.dtype == torch.float64 else torch.float32
    if cut.value != float(torch.tensor(cut.value, dtype=dtype)):
        dtype = torch.float64  # a float64 cut never rounds into a float32 comparison
    remaining = cut.ties
    for start, block in magnitude_blocks(weight, dtype):
        if remaining == 0 or cut.all_ties:  # every tie kept, or every tie pruned
            yield start, _compared(block, cut.value, strictly=cut.all_ties)
            continue
        keep = _compared(block, cut.value, strictly=True)
        ties = _equal_positions(block, cut.value)
        keep[ties[remaining:]] = True  # the earliest ``remaining`` ties go, the rest stay
        remaining = max(0, remaining - ties.numel())
        yield start, keep


def _compared(block: torch.Tensor, value: float, *, strictly: bool) -> torch.Tensor:
    """``block > value`` (``strictly``) or ``block >= value``; on the CPU by numpy, whose
    compare makes the same mask several times faster than torch's one-thread kernel."""
    if block.device.type == "cpu":
        values = block.numpy()
        return torch.from_numpy(values > value if strictly else values >= value)
    return block > value if strictly else block >= value


def _equal_positions(block: torch.Tensor, value: float) -> torch.Tensor:
    """Flat positions of ``block == value``, in order (few: the ties at a cut)."""
    if block.device.type == "cpu":
        return torch.from_numpy(np.flatnonzero(block.numpy() == value))
    return torch.nonzero(block == value).view(-1)


def keep_mask(weight: torch.Tensor, cut: Cut) -> torch.Tensor:
    """The whole keep-mask of ``weight`` by ``cut`` (bool, ``weight``'s shape)."""
    mask = torch.empty(weight.numel(), dtype=torch.bool, device=weight.device)
    for start, keep in keep_blocks(weight, cut):
        mask[start : start + keep.numel()] = keep
    return mask.view(weight.shape)


@torch.no_grad()
def prune_(weight: torch.Tensor, cut: Cut) -> None:
    """Zero (``+0.0``) in place every element ``cut`` prunes, block by block."""
    if not weight.is_contiguous():
        weight.masked_fill_(~keep_mask(weight, cut), 0.0)
        return
    values = weight.detach().view(-1)
    for start, keep in keep_blocks(weight, cut):
        zero_unkept_(values[start : start + keep.numel()], keep)


# Integer dtypes of each float width, to edit a float tensor's bit patterns in place.
_BIT_VIEWS = {1: torch.int8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def zero_unkept_(values: torch.Tensor, keep: torch.Tensor) -> None:
    """``values`` (flat, contiguous) set to ``+0.0`` where ``keep`` is False, in place:
    ``masked_fill_(~keep, 0.0)`` bit for bit. Read as integers, multiplying by the mask
    (0 or 1) writes the pattern of +0.0 and leaves every kept element's bits as they are
    (a -0.0 or NaN too), about twenty times faster on the CPU than masked_fill_, which
    branches per element."""
    bits = _BIT_VIEWS.get(values.element_size())
    if bits is None or values.is_complex():
        values.masked_fill_(~keep, 0.0)
        return
    values.view(bits).mul_(keep)


Counts = list[tuple[int, int]]  # per tensor: |w| below the cut, |w| equal to it


def kth_smallest(
    weights: Sequence[torch.Tensor], k: int, dtype: torch.dtype
) -> tuple[float, Counts | None]:
    """The k-th smallest (1-based) ``|w|`` across ``weights``, exactly, as a Python float,
    and each tensor's counts below and at it when they came for free (else None)."""
    total = sum(w.numel() for w in weights)
    device = weights[0].device
    if total <= 16 * SAMPLE:
        values = torch.cat([flat(w).abs().to(device=device, dtype=dtype) for w in weights])
        return float(torch.kthvalue(values, k).values), None
    sample = _sample(weights, total // SAMPLE, dtype).to(device)
    size = sample.numel()
    # The sample rank of the answer is roughly binomial around k * size / total: a margin
    # of 6 standard deviations (plus a few ranks) misses with negligible chance.
    q = k / total
    margin = 6 * math.sqrt(size * q * (1 - q)) + 8
    low_rank, high_rank = math.floor(q * size - margin), math.ceil(q * size + margin)
    low = float(torch.kthvalue(sample, low_rank).values) if low_rank >= 1 else -math.inf
    high = float(torch.kthvalue(sample, high_rank).values) if high_rank <= size else math.inf
    # Far more inside the bracket than expected: the sample misled; stop collecting.
    limit = 4 * total * 2 * margin / size + BLOCK_ELEMENTS
    found = _inside_bracket(weights, k, dtype, low, high, limit)
    return found if found is not None else (_bisect(weights, k, dtype), None)


def _sample(weights: Sequence[torch.Tensor], step: int, dtype: torch.dtype) -> torch.Tensor:
    """Every ``step``-th magnitude of the concatenation, from the first."""
    parts, base = [], 0
    for weight in weights:
        first = (-base) % step
        parts.append(flat(weight)[first::step].abs().to(dtype).cpu())
        base += weight.numel()
    return torch.cat(parts)


def _inside_bracket(
    weights: Sequence[torch.Tensor],
    k: int,
    dtype: torch.dtype,
    low: float,
    high: float,
    limit: float,
) -> tuple[float, Counts | None] | None:
    """The k-th value when it lies strictly inside (low, high), with each tensor's counts
    below and at it (one pass over everything, then only the few inside); else None."""
    at_most_low: list[int] = []
    below_high = 0
    inside: list[list[torch.Tensor]] = []
    kept = 0
    # the magnitudes and flags of a block, in buffers reused block after block and tensor
    # after tensor: the elements kept meanwhile then never settle in the holes fresh ones
    # would leave (see magnitude_blocks)
    longest = min(BLOCK_ELEMENTS, max(w.numel() for w in weights))
    flags = np.empty((3, longest), dtype=bool)
    buffers: dict[torch.device, torch.Tensor] = {}
    for weight in weights:
        n_at_most_low, mine = 0, []
        if weight.device not in buffers:
            buffers[weight.device] = torch.empty(longest, dtype=dtype, device=weight.device)
        for _, block in magnitude_blocks(weight, dtype, buffers[weight.device]):
            # past the limit the sample misled: stop collecting, fall back
            low_count, high_count, chosen = _split(block, low, high, flags, kept <= limit)
            n_at_most_low += low_count
            below_high += high_count
            if chosen is not None:
                kept += chosen.numel()
                mine.append(chosen)
        at_most_low.append(n_at_most_low)
        inside.append(mine)
    n_low = sum(at_most_low)
    if k <= n_low:  # at or below low: low itself when fewer than k lie strictly below it
        return (low, None) if k > _count(weights, dtype, lambda b: b < low) else None
    if k > below_high:  # at or above high
        return (high, None) if k <= _count(weights, dtype, lambda b: b <= high) else None
    if kept > limit:
        return None
    everything = torch.cat([part for parts in inside for part in parts])
    value = float(torch.kthvalue(everything, k - n_low).values)
    counts = []
    for n_at_most_low, parts in zip(at_most_low, inside, strict=True):
        below = n_at_most_low + sum(int(torch.count_nonzero(p < value)) for p in parts)
        equal = sum(int(torch.count_nonzero(p == value)) for p in parts)
        counts.append((below, equal))
    return value, counts


def _split(
    block: torch.Tensor, low: float, high: float, flags: np.ndarray, collect: bool
) -> tuple[int, int, torch.Tensor | None]:
    """(how many are <= low, how many < high, those strictly between when ``collect``) of
    one block of magnitudes; ``flags``: three bool rows at least a block long, reused."""
    if block.device.type == "cpu":
        # numpy compares, counts and selects a CPU block several times faster than torch's
        # one-thread kernels; the results are the same, exactly
        values = block.numpy()
        above_low, under_high, between = flags[:, : values.size]
        np.greater(values, low, out=above_low)
        np.less(values, high, out=under_high)
        chosen = None
        if collect:
            np.logical_and(above_low, under_high, out=between)
            chosen = torch.from_numpy(values[between])
        at_most_low = values.size - int(np.count_nonzero(above_low))
        return at_most_low, int(np.count_nonzero(under_high)), chosen
    above, under = block > low, block < high
    chosen = block[above & under].cpu() if collect else None
    at_most_low = block.numel() - int(torch.count_nonzero(above))
    return at_most_low, int(torch.count_nonzero(under)), chosen


def _count(
    weights: Sequence[torch.Tensor],
    dtype: torch.dtype,
    test: Callable[[torch.Tensor], torch.Tensor],
) -> int:
    """How many magnitudes pass ``test``, over every block of every tensor."""
    return sum(
        int(torch.count_nonzero(test(block)))
        for weight in weights
        for _, block in magnitude_blocks(weight, dtype)
    )


def _bisect(weights: Sequence[torch.Tensor], k: int, dtype: torch.dtype) -> float:
    """The smallest value v with ``count(|w| <= v) >= k``, by bisection on the bit
    patterns of non-negative floats (ordered like the integers they read as)."""
    int_dtype = torch.int64 if dtype == torch.float64 else torch.int32
    largest = max(float(flat(w).abs().amax()) for w in weights if w.numel())
    lo, hi = 0, int(torch.tensor(largest, dtype=dtype).view(int_dtype))
    while lo < hi:
        mid = (lo + hi) // 2
        value = float(torch.tensor(mid, dtype=int_dtype).view(dtype))
        count = _count(weights, dtype, functools.partial(torch.le, other=value))
        if count >= k:
            hi = mid
        else:
            lo = mid + 1
    return float(torch.tensor(lo, dtype=int_dtype).view(dtype))
