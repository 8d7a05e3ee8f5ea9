"""Tensor-level pruning masks: threshold, magnitude (per tensor or global), channel and N:M.

Every function takes weights and returns boolean *keep*-masks (True = keep) of the
weight's shape on the weight's device; none modifies its input. They run under
``torch.no_grad()``, so parameters can be passed as they are. Applying a mask means
``torch.where(mask, weight, 0)``; ``apply.py`` bakes the zeros into ordinary parameters.

The rules, each vectorised over whole tensors:

- ``threshold_mask``: magnitude threshold pruning, ``|w| < alpha * max|w|`` is pruned.
- ``magnitude_mask`` / ``global_magnitude_masks``: exactly ``k = round(amount * numel)``
  of the smallest ``|w|`` are pruned (``k`` as ``torch.nn.utils.prune`` computes it), in
  one tensor or across several; ties at the cut go lowest flat index first.
- ``channel_mask``: whole channels along ``axis``, ranked by L1 or L2 norm.
- ``n_m_mask``: the ``n`` largest ``|w|`` of every ``m`` consecutive weights are kept.

Weights must be finite: a NaN has no magnitude to rank, so every function raises
``ModelError`` rather than return a mask that silently depends on where NaNs sort.

Activation pruning (``|a| < beta * max|a|`` zeroed at run time) lives with the other
forward hooks in ``activations.py``; ``prune_activations`` is re-exported here.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from ..errors import ModelError, SpecError
from .activations import at_least, prune_activations
from .magnitudes import cuts, keep_mask
from .specs import NORMS, _fraction

__all__ = [
    "channel_mask",
    "global_magnitude_masks",
    "magnitude_mask",
    "n_m_mask",
    "prune_activations",
    "threshold_mask",
]


@torch.no_grad()
def threshold_mask(weight: torch.Tensor, alpha: float) -> torch.Tensor:
    """Keep-mask of magnitude threshold pruning: prune every ``|w| < alpha * max|w|``.

    ``alpha`` is in [0, 1] and ``max|w|`` is taken over the whole tensor (one layer).
    The comparison is exact: ``alpha * max|w|`` is the float64 product, not rounded to
    the weight's dtype. An all-zero weight keeps everything (nothing is below 0).
    """
    alpha = _fraction(alpha, "alpha", low_open=False, high_open=False)
    _check_weight(weight)
    if weight.numel() == 0:
        return torch.ones_like(weight, dtype=torch.bool)
    magnitude = _magnitudes(weight)
    return at_least(magnitude, alpha * float(magnitude.amax()))


@torch.no_grad()
def magnitude_mask(weight: torch.Tensor, amount: float) -> torch.Tensor:
    """Keep-mask that prunes exactly ``k = round(amount * numel)`` weights of smallest ``|w|``.

    ``k`` is computed as ``torch.nn.utils.prune.l1_unstructured`` computes it (Python's
    ``round``, half to even). Among weights whose ``|w|`` equals the cut value, the lowest
    flat (row-major) indices are pruned first. Zeros are the smallest magnitudes, so
    re-pruning an already pruned tensor with the same ``amount`` gives the same mask.
    """
    amount = _fraction(amount, "amount", low_open=True, high_open=True)
    _check_weight(weight)
    if weight.numel() == 0:
        return torch.ones_like(weight, dtype=torch.bool)
    check_finite_weights([weight], ["weight"])
    (cut,) = cuts([weight], round(amount * weight.numel()))
    return keep_mask(weight, cut)


@torch.no_grad()
def global_magnitude_masks(weights: Sequence[torch.Tensor], amount: float) -> list[torch.Tensor]:
    """One keep-mask per tensor, pruning exactly ``k = round(amount * total)`` weights overall.

    The ``k`` smallest ``|w|`` across all tensors are pruned (as
    ``torch.nn.utils.prune.global_unstructured`` with ``L1Unstructured``), so a layer of
    small weights may lose more than ``amount`` of itself and another layer less. Ties at
    the cut go in concatenation order: earlier tensor first, then lower flat index.
    """
    amount = _fraction(amount, "amount", low_open=True, high_open=True)
    weights = list(weights)
    for i, weight in enumerate(weights):
        _check_weight(weight, name=f"weights[{i}]")
    if not weights:
        return []
    check_finite_weights(weights, [f"weights[{i}]" for i in range(len(weights))])
    # Block by block (magnitudes.py): no buffer of every |w| in float32.
    total = sum(weight.numel() for weight in weights)
    return [
        keep_mask(weight, cut)
        for weight, cut in zip(weights, cuts(weights, round(amount * total)), strict=True)
    ]


def check_finite_weights(weights: Sequence[torch.Tensor], names: Sequence[str]) -> None:
    """``ModelError`` naming the first weight with a NaN or infinite value.

    min and max propagate NaN and reach any infinity: two reductions, no temporaries.
    """
    for weight, name in zip(weights, names, strict=True):
        if weight.numel() and not bool(
            torch.isfinite(weight.detach().amax()) & torch.isfinite(weight.detach().amin())
        ):
            magnitude = weight.detach().abs()
            _check_finite_max(magnitude.amax(), magnitude, name)


@torch.no_grad()
def channel_mask(
    weight: torch.Tensor,
    *,
    axis: int,
    norm: str = "l1",
    amount: float | None = None,
    threshold: float | None = None,
) -> torch.Tensor:
    """Keep-mask that prunes whole channels along ``axis``, ranked by their L1 or L2 norm.

    A channel is the slice ``weight.select(axis, c)``: ``axis`` is 0 (output channels)
    for Linear, Conv and Embedding weights, 1 for ConvTranspose. Give exactly one of:

    - ``amount`` in (0, 1): prune the ``round(amount * C)`` channels of smallest norm,
      as ``torch.nn.utils.prune.ln_structured(n=1 or 2, dim=axis)``; ties at the cut go
      lowest channel index first;
    - ``threshold`` (alpha) in [0, 1]: prune every channel with
      ``norm < alpha * max norm`` (exact comparison, as in ``threshold_mask``).

    Norms are ``torch.linalg.vector_norm`` over all other dimensions (computed in float32
    for float16/bfloat16 weights, where an L2 norm overflows easily); for a 1-D weight
    each element is its own channel.
    """
    if norm not in NORMS:
        raise SpecError(f"norm must be one of {NORMS}, got {norm!r}")
    if (amount is None) == (threshold is None):
        raise SpecError(
            "channel_mask needs exactly one of amount (fraction of channels removed, "
            "0 < amount < 1) or threshold (alpha, 0 <= alpha <= 1)"
        )
    if amount is not None:
        amount = _fraction(amount, "amount", low_open=True, high_open=True)
    if threshold is not None:
        threshold = _fraction(threshold, "threshold", low_open=False, high_open=False)
    _check_weight(weight)
    axis = _check_axis(weight, axis)
    if weight.numel() == 0:
        return torch.ones_like(weight, dtype=torch.bool)
    magnitude = _magnitudes(weight)
    others = [d for d in range(weight.ndim) if d != axis]
    if others:
        # Same call as torch.nn.utils.prune._compute_norm, so the norms (and the
        # ranking) are bit-identical to ln_structured's for float32 and float64.
        source = weight if weight.dtype == magnitude.dtype else magnitude
        norms = torch.linalg.vector_norm(source, ord=1 if norm == "l1" else 2, dim=others)
    else:
        norms = magnitude  # vector_norm(dim=[]) would reduce over everything
    if amount is not None:
        keep_channels = _keep_all_but_smallest(norms, round(amount * norms.numel()))
    else:
        assert threshold is not None  # exactly one of amount and threshold, checked above
        keep_channels = at_least(norms, threshold * float(norms.amax()))
    view = [1] * weight.ndim
    view[axis] = -1
    return keep_channels.view(view).expand(weight.shape).contiguous()


@torch.no_grad()
def n_m_mask(weight: torch.Tensor, n: int, m: int, *, axis: int) -> torch.Tensor:
    """Keep-mask of N:M sparsity: the ``n`` largest ``|w|`` of every ``m`` consecutive weights.

    Groups run along ``axis``, the input dimension: 1 for Linear and Conv weights, 0 for
    ConvTranspose and for 1-D tensors. When the size along ``axis`` is not a multiple of
    ``m``, the last, partial group keeps its ``n`` largest (all of it if it has at most
    ``n`` elements). Within a group, ties go lowest index first (it is pruned first).
    """
    if (
        isinstance(n, bool)
        or isinstance(m, bool)
        or not isinstance(n, int)
        or not isinstance(m, int)
        or not 0 < n < m
    ):
        raise SpecError(f"n and m must be integers with 0 < n < m (e.g. 2:4), got n={n!r}, m={m!r}")
    _check_weight(weight)
    axis = _check_axis(weight, axis)
    if weight.numel() == 0:
        return torch.ones_like(weight, dtype=torch.bool)
    rows = _magnitudes(weight).movedim(axis, -1)
    length = rows.shape[-1]
    pad = -length % m
    if pad:
        # -1 is below every magnitude, so padding is pruned before any real weight:
        # a partial group of r elements keeps min(r, n) of them.
        rows = torch.nn.functional.pad(rows, (0, pad), value=-1.0)
    groups = rows.reshape(*rows.shape[:-1], -1, m)
    # A stable ascending sort ranks each group by (|w|, index); the last n are kept.
    order = torch.sort(groups, dim=-1, stable=True).indices
    keep = torch.zeros(groups.shape, dtype=torch.bool, device=weight.device)
    keep.scatter_(-1, order[..., m - n :], True)
    keep = keep.reshape(rows.shape)[..., :length]
    return keep.movedim(-1, axis).contiguous()


# --------------------------------------------------------------------------- helpers


def _check_weight(weight: object, name: str = "weight") -> None:
    if not isinstance(weight, torch.Tensor) or not weight.is_floating_point():
        got = f"dtype {weight.dtype}" if isinstance(weight, torch.Tensor) else type(weight).__name__
        raise ModelError(f"{name} must be a floating-point torch.Tensor, got {got}")


def _check_axis(weight: torch.Tensor, axis: object) -> int:
    ndim = weight.ndim
    if isinstance(axis, bool) or not isinstance(axis, int) or not -ndim <= axis < ndim:
        allowed = f"an integer in [{-ndim}, {ndim - 1}]" if ndim else "none (a 0-d tensor)"
        raise SpecError(
            f"axis must be {allowed} for a weight of shape {tuple(weight.shape)}, got {axis!r}"
        )
    return axis % ndim


def _magnitude_dtype(dtype: torch.dtype) -> torch.dtype:
    # float16/bfloat16 widen exactly to float32, where sorting, selection and norms are
    # supported everywhere and do not overflow.
    return dtype if dtype == torch.float64 else torch.float32


def _magnitudes(weight: torch.Tensor) -> torch.Tensor:
    """``|weight|`` in float32 (float64 for float64); raises on NaN or infinity."""
    magnitude = weight.abs().to(_magnitude_dtype(weight.dtype))
    _check_finite_max(magnitude.amax(), magnitude, "weight")
    return magnitude


def _check_finite_max(largest: torch.Tensor, magnitude: torch.Tensor, name: str) -> None:
    # max|w| is finite iff every |w| is (amax propagates NaN), so the common case costs
    # one reduction; the count is only computed for the error message.
    if not math.isfinite(float(largest)):
        bad = int((~torch.isfinite(magnitude)).sum())
        raise ModelError(
            f"{name} has {bad} NaN or infinite value{'s' if bad != 1 else ''} "
            f"(of {magnitude.numel()}); pruning needs finite values"
        )


def _keep_all_but_smallest(values: torch.Tensor, k: int) -> torch.Tensor:
    """Flat keep-mask pruning the ``k`` smallest of 1-D ``values``; ties: lowest index first."""
    count = values.numel()
    if k <= 0:
        return torch.ones(count, dtype=torch.bool, device=values.device)
    if k >= count:
        return torch.zeros(count, dtype=torch.bool, device=values.device)
    cut = _kth_smallest(values, k)
    keep = values > cut
    pruned = count - int(torch.count_nonzero(keep))  # everything <= cut
    if pruned > k:
        # More values equal the cut than may go: prune the first `needed` of them in
        # index order (their running count), keep the rest. Usually cut == 0 in an
        # already pruned tensor, where the ties are the zeros.
        ties = values == cut
        needed = k - (pruned - int(torch.count_nonzero(ties)))
        rank_dtype = torch.int32 if count < 2**31 else torch.int64
        keep |= ties & (torch.cumsum(ties, 0, dtype=rank_dtype) > needed)
    return keep


# Size of the strided sample that brackets the k-th smallest value (see _kth_smallest).
_SAMPLE = 1 << 16


def _kth_smallest(values: torch.Tensor, k: int, sample_size: int = _SAMPLE) -> torch.Tensor:
    """The k-th smallest (1-based) of 1-D ``values``, exactly, as ``torch.kthvalue`` gives it.

    Selection, never a sort. ``torch.kthvalue`` alone copies the whole input and an int64
    index per element; on a large input it is cheaper to bracket the answer between two
    quantiles of a strided sample, count what lies at or below each end of the bracket,
    and select strictly inside it (a few percent of the input). Counting the ends first
    means a huge tie there (the zeros of a pruned tensor, the few levels of a quantized
    one) is answered by the count instead of copied into the selection. If the sample
    misleads (the bracket misses the answer, e.g. on periodic data), fall back to
    ``kthvalue`` on everything: the result is exact either way, only the time differs.
    """
    count = values.numel()
    if count <= 16 * sample_size:
        return torch.kthvalue(values, k).values
    sample = values[:: count // sample_size]
    size = sample.numel()
    # The sample rank of the answer is roughly binomial around k * size / count: a
    # margin of 6 standard deviations (plus a few ranks) misses with negligible chance.
    q = k / count
    centre = q * size
    margin = 6 * math.sqrt(size * q * (1 - q)) + 8
    low_rank, high_rank = math.floor(centre - margin), math.ceil(centre + margin)
    low = torch.kthvalue(sample, low_rank).values if low_rank >= 1 else values.amin()
    high = torch.kthvalue(sample, high_rank).values if high_rank <= size else values.amax()
    at_most_low = values <= low
    n_at_most_low = int(torch.count_nonzero(at_most_low))
    if k <= n_at_most_low:
        if k > int(torch.count_nonzero(values < low)):
            return low
    else:
        under_high = values < high
        n_under_high = int(torch.count_nonzero(under_high))
        if k <= n_under_high:
            inside = values[under_high & ~at_most_low]
            return torch.kthvalue(inside, k - n_at_most_low).values
        if k <= int(torch.count_nonzero(values <= high)):
            return high
    return torch.kthvalue(values, k).values
