"""Tensor-level quantization: the affine min/max mapping and its symmetric variant,
per tensor, per channel or per group of a channel's inputs (``groups.py``).

Numerics follow PyTorch's quantization kernels: the range is widened to include 0 so
that 0.0 is exactly representable, codes are rounded half to even and clamped to
[qmin, qmax]. Scales are computed in float64 and stored as float32 (float64 for float64
input), and codes are computed in the scale's dtype; a constant tensor gets a scale that
makes its round trip exact instead of dividing by a zero range. A scale stored in a
narrower dtype (float16 or bfloat16, as group-wise checkpoints ship them) is rounded *up*
to it, so the range still fits, and the codes are computed with that rounded scale.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import cast

import numpy as np
import torch

from ..errors import ModelError, SpecError
from .groups import group_count, group_rows, ungroup_rows
from .specs import check_bits


def scale_dtype_for(dtype: torch.dtype) -> torch.dtype:
    """Scales are float32, or float64 for float64 tensors so constants round-trip exactly."""
    return torch.float64 if dtype == torch.float64 else torch.float32


@dataclass(frozen=True)
class QuantizedTensor:
    """Integer codes with the parameters that map them back to real values.

    ``real = (codes - zero_point) * scale``; along ``axis`` when per-channel, in which
    case ``scale`` and ``zero_point`` have one entry per channel; with ``group_size`` they
    are (channels, groups): one entry per group of a channel's inputs (``groups.py``).
    """

    codes: torch.Tensor
    scale: torch.Tensor
    zero_point: torch.Tensor
    bits: int
    axis: int | None
    qmin: int
    qmax: int
    dtype: torch.dtype = torch.float32
    group_size: int | None = None

    @property
    def shape(self) -> torch.Size:
        return self.codes.shape


def quant_range(bits: int, *, symmetric: bool) -> tuple[int, int]:
    """The integer range (qmin, qmax) of ``bits``-bit codes: signed when symmetric."""
    check_bits(bits)
    if symmetric:
        return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    return 0, 2**bits - 1


def check_finite(x: torch.Tensor, name: str = "tensor") -> None:
    """Raise ``ModelError`` naming ``name`` and the count of NaN/infinite values, if any."""
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        got = f"dtype {x.dtype}" if isinstance(x, torch.Tensor) else type(x).__name__
        raise ModelError(f"{name} must be a floating-point tensor, got {got}")
    bad = int((~torch.isfinite(x)).sum())
    if bad:
        raise ModelError(
            f"{name} has {bad} NaN or infinite value{'s' if bad != 1 else ''} "
            f"(of {x.numel()}); compression needs finite values"
        )


def _reduce_dims(x: torch.Tensor, axis: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Min and max of ``x``: over everything, or per channel along ``axis``."""
    if axis is None:
        return x.amin(), x.amax()
    flat = x.movedim(axis, 0).reshape(x.shape[axis], -1)
    return flat.amin(dim=1), flat.amax(dim=1)


def choose_qparams(
    min_val: torch.Tensor,
    max_val: torch.Tensor,
    *,
    bits: int,
    symmetric: bool = False,
    scale_dtype: torch.dtype | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale (see ``scale_dtype_for``) and zero point (int32) for the range [min_val, max_val].

    ``scale_dtype`` float16 or bfloat16 stores the scale rounded up to that dtype (a
    scale too large for it becomes infinite: ``compute_qparams`` refuses it).

    The range is widened to include 0. Affine: ``scale = (max - min) / (L - 1)`` with
    ``L = 2**bits`` levels. Symmetric: zero point 0 and ``scale = max|x| / ((L - 1) / 2)``
    (PyTorch's rule). A degenerate range (a constant ``c`` per channel, or all zeros)
    gets ``scale = |c|`` (1 for zeros) so that ``c`` is exactly one code away from zero.
    """
    qmin, qmax = quant_range(bits, symmetric=symmetric)
    lo = torch.clamp(min_val.to(torch.float64), max=0.0)
    hi = torch.clamp(max_val.to(torch.float64), min=0.0)
    constant = min_val.to(torch.float64) == max_val.to(torch.float64)
    magnitude = torch.maximum(-lo, hi)
    if symmetric:
        scale = magnitude / ((qmax - qmin) / 2)
    else:
        scale = (hi - lo) / (qmax - qmin)
        # hi - lo overflows float64 for float64 ranges wider than its largest finite value.
        scale = torch.where(torch.isfinite(scale), scale, hi / (qmax - qmin) - lo / (qmax - qmin))
    if scale_dtype in (torch.float16, torch.bfloat16):
        scale = torch.where(constant, magnitude, scale)
        scale = round_up_to(torch.where(scale > 0, scale, torch.ones_like(scale)), scale_dtype)
    else:
        scale = _full_width_scale(scale, constant, magnitude, scale_dtype or min_val.dtype)

    if symmetric:
        zero_point = torch.zeros_like(scale, dtype=torch.int32)
    else:
        scale64 = scale.to(torch.float64)
        zero_point = torch.clamp(qmin - torch.round(lo / scale64), qmin, qmax).to(torch.int32)
    return scale, zero_point


def round_up_to(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Positive float64 ``x`` as the nearest ``dtype`` value that is not smaller."""
    rounded = x.to(dtype)
    below = rounded.to(torch.float64) < x
    return torch.where(below, torch.nextafter(rounded, torch.full_like(rounded, math.inf)), rounded)


def _full_width_scale(
    scale: torch.Tensor, constant: torch.Tensor, magnitude: torch.Tensor, dtype: torch.dtype
) -> torch.Tensor:
    """A float64 scale stored as float32 (float64 for a float64 ``dtype``)."""
    scale_dtype = scale_dtype_for(dtype)
    # Rounding a scale down would push the range's ends past qmin/qmax, and a subnormal
    # scale can lose most of its bits, so spread ranges get at least the smallest normal.
    scale = torch.clamp(scale.to(scale_dtype), min=torch.finfo(scale_dtype).tiny)
    # A constant c keeps scale |c| exactly (c is representable in the scale's dtype), even
    # when c is subnormal: c is then one code from zero and round-trips exactly.
    scale = torch.where(constant, magnitude.to(scale_dtype), scale)
    return torch.where(scale > 0, scale, torch.ones_like(scale))


def _per_channel(
    x: torch.Tensor, params: tuple[torch.Tensor, ...], axis: int | None
) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
    """``x`` viewed as (outer, channels, inner) and ``params`` shaped (1, channels, 1).

    Broadcasting over one long inner run keeps the elementwise kernels vectorised; the
    natural (C, 1, 1, 1) broadcast of a conv weight makes them crawl over 3x3 kernels.
    """
    if axis is None or all(p.dim() == 0 for p in params):
        return x, params
    channels = x.shape[axis]
    outer = math.prod(x.shape[:axis])
    grouped = x.reshape(outer, channels, -1) if x.numel() else x.reshape(outer, channels, 0)
    return grouped, tuple(p.reshape(1, channels, 1) for p in params)


def _codes(
    x: torch.Tensor,
    scale: torch.Tensor,
    zero_point: torch.Tensor,
    qmin: int,
    qmax: int,
    axis: int | None,
) -> torch.Tensor:
    """``clamp(round(x / s) + z)`` as whole numbers in the scale's dtype (exact up to 2**24)."""
    compute = scale_dtype_for(x.dtype)
    grouped, (s, z) = _per_channel(x.to(compute), (scale.to(compute), zero_point.to(compute)), axis)
    # One quotient tensor updated in place: a 25 M-weight model quantizes in a fraction
    # of a second. The quotient is correctly rounded, so codes differ from the exact
    # float64 ones only where x / s is within rounding of a .5 tie.
    codes = torch.div(grouped, s).round_().add_(z).clamp_(qmin, qmax)
    return codes.reshape(x.shape)


def _values(
    codes: torch.Tensor,
    scale: torch.Tensor,
    zero_point: torch.Tensor,
    axis: int | None,
    dtype: torch.dtype,
    *,
    owned: bool = False,
) -> torch.Tensor:
    """``(codes - z) * s`` in ``dtype``, saturating at its largest finite value (``owned``:
    ``codes`` is a temporary this module made, overwritten instead of copied).

    The grid's last point can lie up to half a step beyond the quantized range; for a
    range that ends near the dtype's largest finite value it saturates there instead of
    becoming infinite (which is also the nearer value).
    """
    compute = scale_dtype_for(dtype)
    # codes of our own making (fake quantization) are reused in place: one pass less
    real = codes if owned and codes.dtype == compute else codes.to(compute, copy=True)
    grouped, (s, z) = _per_channel(real, (scale.to(compute), zero_point.to(compute)), axis)
    largest = torch.finfo(dtype).max
    grouped.sub_(z).mul_(s).clamp_(-largest, largest)
    return grouped.reshape(real.shape).to(dtype)


def _grouped(
    x: torch.Tensor, params: tuple[torch.Tensor, ...], axis: int | None, group_size: int | None
) -> tuple[torch.Tensor, tuple[torch.Tensor, ...], int | None]:
    """``x`` and ``params`` as per-row ones when group-wise (``groups.py``), else as given."""
    if group_size is None:
        return x, params, axis
    if axis is None:
        raise SpecError("group-wise quantization needs the output channels' axis, got None")
    return group_rows(x, axis, group_size), tuple(p.reshape(-1) for p in params), 0


# Elements per block of the chunked passes: a few MB of float32 temporaries.
BLOCK_ELEMENTS = 1 << 20


def _blocks(
    x: torch.Tensor, params: tuple[torch.Tensor, ...], axis: int | None, group_size: int | None
) -> Iterator[tuple[tuple[slice, ...], torch.Tensor, tuple[torch.Tensor, ...], int | None]]:
    """``x`` in row blocks of about ``BLOCK_ELEMENTS``: (index into ``block_view``, the
    block, its parameters, its axis). Every kernel here is elementwise given a row's
    parameters, so a block's result equals the same slice of the whole tensor's, and the
    float32 temporaries stay the size of a block instead of the tensor's."""
    view = block_view(x, axis, group_size)
    if axis is None:
        for start in range(0, view.shape[0], BLOCK_ELEMENTS):
            part: tuple[slice, ...] = (slice(start, start + BLOCK_ELEMENTS),)
            yield part, view[part], params, None
        return
    if group_size is not None:  # (channels, inputs): whole channels with their groups
        rows = max(1, BLOCK_ELEMENTS // max(1, view.shape[1]))
        for start in range(0, view.shape[0], rows):
            part = (slice(start, start + rows),)
            yield part, view[part], tuple(p[part] for p in params), 0
        return
    outer, channels, inner = view.shape
    if outer == 1:  # channels first (axis 0): blocks of whole channels
        rows = max(1, BLOCK_ELEMENTS // max(1, inner))
        for start in range(0, channels, rows):
            channel = slice(start, start + rows)
            yield (
                (slice(None), channel),
                view[:, channel],
                tuple(p.reshape(-1)[channel] for p in params),
                1,
            )
        return
    rows = max(1, BLOCK_ELEMENTS // max(1, channels * inner))
    for start in range(0, outer, rows):
        part = (slice(start, start + rows),)
        yield part, view[part], params, 1


def block_view(x: torch.Tensor, axis: int | None, group_size: int | None) -> torch.Tensor:
    """``x`` as the 1-, 2- or 3-D view ``_blocks`` slices (a copy only when ``x`` is not
    contiguous, or group-wise along an axis other than 0)."""
    if axis is None:
        return x.reshape(-1)
    if group_size is not None:
        return x.movedim(axis, 0).reshape(x.shape[axis], -1)
    return x.reshape(math.prod(x.shape[:axis]), x.shape[axis], -1)


def _blockwise(
    x: torch.Tensor,
    params: tuple[torch.Tensor, torch.Tensor],
    axis: int | None,
    group_size: int | None,
    kernel: Callable[[torch.Tensor, tuple[torch.Tensor, ...], int | None], torch.Tensor],
    out: torch.Tensor,
) -> torch.Tensor:
    """``out`` (a tensor of ``x``'s shape) filled with ``kernel`` applied block by block."""
    if x.numel() == 0 or (group_size is not None and axis != 0):
        return out.copy_(kernel(x, params, axis))  # nothing to split, or a rare layout
    target = block_view(out, axis, group_size)
    if not out.is_contiguous() or target.data_ptr() != out.data_ptr():
        return out.copy_(kernel(x, params, axis))
    for part, block, block_params, block_axis in _blocks(x, params, axis, group_size):
        target[part] = kernel(block, block_params, block_axis)
    return out


def quantize_with(
    x: torch.Tensor,
    scale: torch.Tensor,
    zero_point: torch.Tensor,
    *,
    qmin: int,
    qmax: int,
    axis: int | None = None,
    group_size: int | None = None,
    dtype: torch.dtype = torch.int32,
    offset: int = 0,
) -> torch.Tensor:
    """Integer codes (``dtype``, int32 by default) of ``x`` for given parameters:
    ``clamp(round(x / s) + z) - offset`` (``offset`` qmin gives unsigned codes that fit
    the narrowest dtype: uint8 up to 8 bits).

    Rounds half to even, as ``torch.round`` and PyTorch's kernels do. With ``group_size``,
    ``scale`` and ``zero_point`` are (channels, groups) along ``axis``. Computed in row
    blocks: no temporary the size of ``x`` (see ``_blocks``).
    """
    codes, _ = quantize_checked(
        x,
        scale,
        zero_point,
        qmin=qmin,
        qmax=qmax,
        axis=axis,
        group_size=group_size,
        dtype=dtype,
        offset=offset,
        check=False,
    )
    return codes


# numpy's casts and comparisons of these dtypes run several times faster than torch's on
# one thread (they are SIMD loops; torch's go element by element through its iterator)
_NUMPY_FLOATS = (torch.float16, torch.float32, torch.float64)
_NUMPY_CODES = {torch.uint8: "uint8", torch.uint16: "uint16", torch.int32: "int32"}


def _narrowed(codes: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Whole-number float codes cast to integer ``dtype`` (exact: they are in its range)."""
    if codes.device.type == "cpu" and codes.dtype in _NUMPY_FLOATS and dtype in _NUMPY_CODES:
        return torch.from_numpy(codes.detach().numpy().astype(_NUMPY_CODES[dtype]))
    return codes.to(dtype)


def _equal(a: torch.Tensor, b: torch.Tensor) -> bool:
    """``torch.equal`` (by value: -0.0 equals 0.0, NaN equals nothing)."""
    if a.device.type == "cpu" and a.dtype == b.dtype and a.dtype in _NUMPY_FLOATS:
        return a.shape == b.shape and bool(np.array_equal(a.detach().numpy(), b.detach().numpy()))
    return torch.equal(a, b)


def quantize_checked(
    x: torch.Tensor,
    scale: torch.Tensor,
    zero_point: torch.Tensor,
    *,
    qmin: int,
    qmax: int,
    axis: int | None = None,
    group_size: int | None = None,
    dtype: torch.dtype = torch.int32,
    offset: int = 0,
    check: bool = True,
) -> tuple[torch.Tensor, bool]:
    """``quantize_with(x, ...)`` and whether dequantizing those codes gives ``x`` back
    exactly (``x`` is on the grid), in one pass: each block's float codes are checked
    before they are narrowed, instead of a second pass widening the narrow codes again.
    ``check`` False skips the check (the values are known to be on the grid: True).
    """
    on_grid = check

    def kernel(
        block: torch.Tensor, params: tuple[torch.Tensor, ...], block_axis: int | None
    ) -> torch.Tensor:
        nonlocal on_grid
        rows, (s, z), row_axis = _grouped(block, params, block_axis, group_size)
        codes = _codes(rows, s, z, qmin, qmax, row_axis)
        narrow = _narrowed(codes - offset if offset else codes, dtype)
        if on_grid:  # the codes are whole numbers, so this is dequantize(codes) exactly
            on_grid = _equal(_values(codes, s, z, row_axis, x.dtype, owned=True), rows)
        return narrow if group_size is None else ungroup_rows(narrow, block.shape, block_axis or 0)

    out = torch.empty(x.shape, dtype=dtype, device=x.device)
    codes = _blockwise(x, (scale, zero_point), axis, group_size, kernel, out)
    return codes, on_grid or not check


def fake_quantize_with(
    x: torch.Tensor,
    scale: torch.Tensor,
    zero_point: torch.Tensor,
    *,
    qmin: int,
    qmax: int,
    axis: int | None = None,
    group_size: int | None = None,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """``x`` rounded onto the grid of given parameters, in ``x``'s dtype.

    Equal to dequantizing ``quantize_with(x, ...)``, without materialising integer codes,
    block by block in ``x``'s own dtype (a bf16 weight is never upcast whole). ``out``
    (``x``'s shape and dtype; may be ``x`` itself) receives the values instead of a new
    tensor.
    """

    def kernel(
        block: torch.Tensor, params: tuple[torch.Tensor, ...], block_axis: int | None
    ) -> torch.Tensor:
        rows, (s, z), row_axis = _grouped(block, params, block_axis, group_size)
        codes = _codes(rows, s, z, qmin, qmax, row_axis)
        values = _values(codes, s, z, row_axis, x.dtype, owned=True)
        return values if group_size is None else ungroup_rows(values, block.shape, block_axis or 0)

    target = torch.empty_like(x, memory_format=torch.contiguous_format) if out is None else out
    return _blockwise(x, (scale, zero_point), axis, group_size, kernel, target)


def _normalise_axis(x: torch.Tensor, axis: int | None) -> int | None:
    if axis is None:
        return None
    if isinstance(axis, bool) or not isinstance(axis, int):
        raise SpecError(f"axis must be None or an int, got {axis!r}")
    if x.dim() == 0 or not -x.dim() <= axis < x.dim():
        raise SpecError(f"axis {axis} is out of range for a tensor of shape {tuple(x.shape)}")
    return axis % x.dim()


def _check_group_size(group_size: object, axis: int | None) -> None:
    if group_size is None:
        return
    if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size <= 0:
        raise SpecError(f"group_size must be None or a positive int, got {group_size!r}")
    if axis is None:
        raise SpecError("group_size needs axis: the output channels whose inputs are grouped")


def compute_qparams(
    x: torch.Tensor,
    *,
    bits: int = 8,
    symmetric: bool = False,
    axis: int | None = None,
    name: str = "tensor",
    group_size: int | None = None,
    scale_dtype: torch.dtype | None = None,
) -> tuple[torch.Tensor, torch.Tensor, int | None]:
    """(scale, zero point, normalised axis) of ``x``'s min/max range, validating everything.

    Per tensor, per channel along ``axis``, or with ``group_size`` one (scale, zero point)
    per group of each channel's inputs, shaped (channels, groups). ``scale_dtype`` as in
    ``choose_qparams``. ``name`` appears in the errors raised for NaN or infinite values.
    """
    check_bits(bits)
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        check_finite(x, name)  # raises: names the tensor and its dtype
    axis = _normalise_axis(x, axis)
    _check_group_size(group_size, axis)
    rows = x if group_size is None else group_rows(x, cast(int, axis), group_size)
    row_axis = axis if group_size is None else 0
    channels = () if row_axis is None else (rows.shape[row_axis],)
    if x.numel() == 0:
        scale = torch.ones(channels, dtype=scale_dtype or scale_dtype_for(x.dtype))
        zero_point = torch.zeros(channels, dtype=torch.int32)
    else:
        low, high = _reduce_dims(rows, row_axis)
        # min and max propagate NaN and infinity, so one look at them replaces a full pass.
        if not bool(torch.isfinite(low).all() & torch.isfinite(high).all()):
            check_finite(x, name)
        scale, zero_point = choose_qparams(
            low, high, bits=bits, symmetric=symmetric, scale_dtype=scale_dtype
        )
        check_scale(scale, name)
    if group_size is not None:
        shape = (x.shape[cast(int, axis)], group_count(x.shape, cast(int, axis), group_size))
        scale, zero_point = scale.reshape(shape), zero_point.reshape(shape)
    return scale, zero_point, axis


def check_scale(scale: torch.Tensor, name: str) -> None:
    """``ModelError`` naming ``name`` when a scale overflowed its (narrow) dtype."""
    if scale.numel() and not bool(torch.isfinite(scale).all()):
        raise ModelError(
            f"{name}: a quantization scale overflows {str(scale.dtype).removeprefix('torch.')} "
            f"(largest {torch.finfo(scale.dtype).max:g}); store scales as "
            'scale_dtype="float32"'
        )


def quantize(
    x: torch.Tensor,
    *,
    bits: int = 8,
    symmetric: bool = False,
    axis: int | None = None,
    name: str = "tensor",
    group_size: int | None = None,
    scale_dtype: torch.dtype | None = None,
) -> QuantizedTensor:
    """Quantize ``x`` to ``bits``-bit integer codes, per tensor, per channel along ``axis``,
    or per group of ``group_size`` of each channel's inputs (see ``compute_qparams``).

    ``name`` appears in the error raised for NaN or infinite values.
    """
    scale, zero_point, axis = compute_qparams(
        x,
        bits=bits,
        symmetric=symmetric,
        axis=axis,
        name=name,
        group_size=group_size,
        scale_dtype=scale_dtype,
    )
    qmin, qmax = quant_range(bits, symmetric=symmetric)
    codes = quantize_with(
        x, scale, zero_point, qmin=qmin, qmax=qmax, axis=axis, group_size=group_size
    )
    return QuantizedTensor(codes, scale, zero_point, bits, axis, qmin, qmax, x.dtype, group_size)


def _dequantize_kernel(
    q: QuantizedTensor,
) -> Callable[[torch.Tensor, tuple[torch.Tensor, ...], int | None], torch.Tensor]:
    def kernel(
        block: torch.Tensor, params: tuple[torch.Tensor, ...], block_axis: int | None
    ) -> torch.Tensor:
        if q.group_size is None:
            return _values(block, params[0], params[1], block_axis, q.dtype)
        rows = group_rows(block, cast(int, block_axis), q.group_size)
        values = _values(rows, params[0].reshape(-1), params[1].reshape(-1), 0, q.dtype)
        return ungroup_rows(values, block.shape, cast(int, block_axis))

    return kernel


def dequantize(q: QuantizedTensor) -> torch.Tensor:
    """Real values of ``q``: ``(codes - zero_point) * scale``, in the original dtype,
    computed in row blocks (no float32 temporary of the whole tensor)."""
    out = torch.empty(q.codes.shape, dtype=q.dtype, device=q.codes.device)
    params = (q.scale, q.zero_point)
    return _blockwise(q.codes, params, q.axis, q.group_size, _dequantize_kernel(q), out)


def dequantizes_to(q: QuantizedTensor, values: torch.Tensor) -> bool:
    """``torch.equal(dequantize(q), values)``, block by block (no copy of the whole)."""
    if values.shape != q.codes.shape or values.dtype != q.dtype:
        return False
    if q.group_size is not None and q.axis != 0:
        return torch.equal(dequantize(q), values)
    kernel = _dequantize_kernel(q)
    target = block_view(values, q.axis, q.group_size)
    params = (q.scale, q.zero_point)
    for part, block, block_params, block_axis in _blocks(q.codes, params, q.axis, q.group_size):
        if not torch.equal(kernel(block, block_params, block_axis), target[part]):
            return False
    return True


def fake_quantize(
    x: torch.Tensor,
    *,
    bits: int = 8,
    symmetric: bool = False,
    axis: int | None = None,
    name: str = "tensor",
    group_size: int | None = None,
    scale_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """``dequantize(quantize(x, ...))``: ``x`` rounded onto the quantization grid."""
    scale, zero_point, axis = compute_qparams(
        x,
        bits=bits,
        symmetric=symmetric,
        axis=axis,
        name=name,
        group_size=group_size,
        scale_dtype=scale_dtype,
    )
    qmin, qmax = quant_range(bits, symmetric=symmetric)
    return fake_quantize_with(
        x, scale, zero_point, qmin=qmin, qmax=qmax, axis=axis, group_size=group_size
    )
