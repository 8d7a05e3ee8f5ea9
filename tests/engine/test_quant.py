"""Property tests of the tensor-level quantization mapping (pytest_compress.engine.quant)."""

from __future__ import annotations

import dataclasses
import math
import warnings

import pytest
import torch
from hypothesis import assume, given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from pytest_compress.engine.quant import (
    QuantizedTensor,
    dequantize,
    fake_quantize,
    quant_range,
    quantize,
    quantize_with,
)
from pytest_compress.strategies import float_tensors

DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
# Up to the dtype's largest finite value, so ranges that end near overflow are covered;
# float_tensors also narrows whole tensors to tiny, subnormal and huge magnitudes.
TENSORS = {
    dtype: float_tensors(
        shape=hnp.array_shapes(min_dims=0, max_dims=4, min_side=1, max_side=5),
        dtype=dtype,
        min_value=-torch.finfo(dtype).max,
        max_value=torch.finfo(dtype).max,
    )
    for dtype in DTYPES
}


ALL_BITS = st.integers(2, 16)


@st.composite
def cases(draw, dtypes=DTYPES, bits=ALL_BITS, tensors=TENSORS):
    """A tensor and the keyword arguments of one valid ``quantize`` call for it."""
    x = draw(tensors[draw(st.sampled_from(dtypes))])
    axes = st.none() if x.dim() == 0 else st.none() | st.integers(-x.dim(), x.dim() - 1)
    return x, {"bits": draw(bits), "symmetric": draw(st.booleans()), "axis": draw(axes)}


def per_element(param: torch.Tensor, x: torch.Tensor, axis: int | None) -> torch.Tensor:
    """``param`` (one value, or one per channel along ``axis``) broadcastable against ``x``."""
    param = param.to(torch.float64)
    if axis is None:
        return param
    shape = [1] * x.dim()
    shape[axis] = -1
    return param.reshape(shape)


def grid_values(q: QuantizedTensor) -> torch.Tensor:
    """The codes' real values in float64, before rounding to the tensor's own dtype."""
    return dequantize(dataclasses.replace(q, dtype=torch.float64))


def grid_slack(q: QuantizedTensor, x: torch.Tensor) -> torch.Tensor:
    """How far beyond scale/2 a value of the quantized range may land from its grid point.

    The stored scale is the exact one (range / (qmax - qmin), or the symmetric rule's)
    rounded to float32 (float64 for float64 tensors). Rounded down, the range spans a
    little more than its qmax - qmin steps, and the clamped end lies up to
    (qmax - qmin) * eps steps beyond half a step. Dividing by the scale and multiplying
    back add roundings of the same relative size, so a few eps of the whole range
    (qmax - qmin steps) bound them all.
    """
    s = per_element(q.scale, x, q.axis)
    return s * (4 * (q.qmax - q.qmin) * torch.finfo(q.scale.dtype).eps)


@given(cases())
def test_parameters_and_codes_are_in_range(case):
    x, kwargs = case
    q = quantize(x, **kwargs)
    qmin, qmax = quant_range(kwargs["bits"], symmetric=kwargs["symmetric"])
    assert (q.qmin, q.qmax, q.bits) == (qmin, qmax, kwargs["bits"])
    assert q.codes.dtype == torch.int32 and q.codes.shape == x.shape
    assert int(q.codes.min()) >= qmin and int(q.codes.max()) <= qmax
    channels = () if kwargs["axis"] is None else (x.shape[kwargs["axis"]],)
    assert q.scale.shape == channels and q.zero_point.shape == channels
    assert q.scale.dtype == (torch.float64 if x.dtype == torch.float64 else torch.float32)
    assert torch.isfinite(q.scale).all() and (q.scale > 0).all()
    assert ((q.zero_point >= qmin) & (q.zero_point <= qmax)).all()
    if kwargs["symmetric"]:
        assert (q.zero_point == 0).all()


@given(cases())
def test_in_range_values_are_within_half_a_step(case):
    x, kwargs = case
    q = quantize(x, **kwargs)
    s = per_element(q.scale, x, q.axis)
    xd = x.to(torch.float64)

    # On the float64 grid the half-step bound holds up to the scale's own rounding.
    grid_error = (xd - grid_values(q)).abs()
    grid_bound = s / 2 + grid_slack(q, x)
    worst = int((grid_error - grid_bound).argmax()) if x.numel() else 0
    assert (grid_error <= grid_bound).all(), (
        f"value {xd.flatten()[worst].item()!r} is {grid_error.flatten()[worst].item()!r} "
        f"from its grid point, bound {grid_bound.expand_as(xd).flatten()[worst].item()!r}"
    )

    # fake_quantize also rounds that grid value to x's dtype: by half an ulp of the result
    # (eps * |result| bounds it), or near zero by at most the smallest subnormal
    # (tiny * eps). For float16 and bfloat16 at high bit widths this dominates: their ulp
    # exceeds the quantization step.
    finfo = torch.finfo(x.dtype)
    fq = fake_quantize(x, **kwargs).to(torch.float64)
    bound = grid_bound + finfo.eps * fq.abs() + finfo.tiny * finfo.eps
    assert ((xd - fq).abs() <= bound).all()


@given(cases())
def test_requantizing_the_dequantized_tensor_gives_the_same_codes(case):
    x, kwargs = case
    q = quantize(x, **kwargs)
    params = {"qmin": q.qmin, "qmax": q.qmax, "axis": q.axis}

    exact = quantize_with(grid_values(q), q.scale, q.zero_point, **params)
    assert torch.equal(exact, q.codes)

    rounded = dequantize(q)
    again = quantize_with(rounded, q.scale, q.zero_point, **params)
    if x.dtype in (torch.float32, torch.float64):
        assert torch.equal(again, q.codes)
    else:
        # float16/bfloat16 cannot hold every grid point of a fine grid: a code may only
        # move where rounding to the dtype moved its value by half a step or more.
        moved = (rounded.to(torch.float64) - grid_values(q)).abs()
        half_step = per_element(q.scale, x, q.axis) / 2
        changed = again != q.codes
        assert (moved >= half_step * (1 - 1e-9)).expand_as(changed)[changed].all()


@given(cases(), st.data())
def test_zero_maps_exactly(case, data):
    x, kwargs = case
    x = x.clone()
    zeros = data.draw(st.lists(st.integers(0, x.numel() - 1), min_size=1, max_size=3))
    x.view(-1)[zeros] = 0.0
    q = quantize(x, **kwargs)
    zero_codes = per_element(q.zero_point, x, q.axis).expand_as(x).reshape(-1)
    assert torch.equal(q.codes.view(-1)[zeros].double(), zero_codes[zeros])
    assert (dequantize(q).view(-1)[zeros] == 0.0).all()
    # The zero point itself dequantizes to exactly 0.0 in every channel.
    at_zero_point = dataclasses.replace(
        q, codes=q.zero_point.clone(), axis=None if q.axis is None else 0
    )
    assert (dequantize(at_zero_point) == 0.0).all()


@given(cases())
def test_codes_are_monotone(case):
    x, kwargs = case
    q = quantize(x, **kwargs)
    # Sort each channel's values (all values when per tensor), including scaled copies
    # that fall outside the quantized range, so clamping is covered too.
    axis = 0 if q.axis is None else q.axis
    rows = x.unsqueeze(0) if q.axis is None or x.dim() == 0 else x.movedim(axis, 0)
    rows = rows.reshape(rows.shape[0], -1).to(torch.float64)
    largest = torch.finfo(x.dtype).max
    wide = torch.cat([rows, 3 * rows, -rows, rows / 3], dim=1).clamp(-largest, largest)
    ordered = wide.to(x.dtype).sort(dim=1).values
    codes = quantize_with(
        ordered, q.scale, q.zero_point, qmin=q.qmin, qmax=q.qmax, axis=None if q.axis is None else 0
    )
    assert (codes.diff(dim=1) >= 0).all()


@given(cases(dtypes=DTYPES).filter(lambda case: case[1]["axis"] is not None))
def test_per_channel_equals_per_tensor_channel_by_channel(case):
    x, kwargs = case
    q = quantize(x, **kwargs)
    per_tensor = {"bits": kwargs["bits"], "symmetric": kwargs["symmetric"]}
    for i in range(x.shape[q.axis]):
        channel = quantize(x.select(q.axis, i), **per_tensor)
        assert torch.equal(q.codes.select(q.axis, i), channel.codes)
        assert torch.equal(q.scale[i], channel.scale)
        assert torch.equal(q.zero_point[i], channel.zero_point)


@given(
    st.data(),
    st.sampled_from(DTYPES),
    st.integers(2, 16),
    st.booleans(),
    hnp.array_shapes(min_dims=1, max_dims=3, min_side=1, max_side=4),
)
def test_constant_channels_round_trip_exactly(data, dtype, bits, symmetric, shape):
    axis = data.draw(st.none() | st.integers(-len(shape), len(shape) - 1), label="axis")
    channels = 1 if axis is None else shape[axis]
    largest = torch.finfo(dtype).max
    # One constant per channel; float_tensors' mix makes them 0, subnormal, tiny or huge.
    values = data.draw(
        float_tensors(shape=(channels,), dtype=dtype, min_value=-largest, max_value=largest),
        label="constants",
    )
    view = [1] * len(shape)
    if axis is not None:
        view[axis] = channels
    x = values.reshape(view).expand(shape).contiguous()

    q = quantize(x, bits=bits, symmetric=symmetric, axis=axis)
    assert torch.isfinite(q.scale).all() and (q.scale > 0).all()
    assert int(q.codes.min()) >= q.qmin and int(q.codes.max()) <= q.qmax
    # Equal nonzero floats have equal bits, so this is a bit-for-bit round trip, except
    # that -0.0 comes back as +0.0: an integer code has no sign for zero.
    assert torch.equal(dequantize(q), x)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("bits", [2, 8, 16])
@pytest.mark.parametrize("symmetric", [False, True])
def test_nasty_constants_round_trip_exactly(dtype, bits, symmetric):
    finfo = torch.finfo(dtype)
    for value in (0.0, -0.0, 1.0, -3.0, finfo.max, -finfo.max, finfo.tiny, finfo.tiny * finfo.eps):
        x = torch.full((3, 2), value, dtype=dtype)
        assert torch.equal(fake_quantize(x, bits=bits, symmetric=symmetric), x), value
        assert torch.equal(fake_quantize(x, bits=bits, symmetric=symmetric, axis=-1), x), value


def test_a_range_ending_at_the_largest_float16_saturates_instead_of_overflowing():
    # The grid's last point, 3 steps of 65504 / 2.6, lies beyond 65504: it used to come
    # back as inf.
    x = torch.tensor([-10077.5, 65504.0], dtype=torch.float16)
    fq = fake_quantize(x, bits=2)
    assert torch.isfinite(fq).all()
    assert fq[1] == 65504.0


def test_float64_range_wider_than_the_largest_float64_has_a_finite_scale():
    x = torch.tensor([-1e308, 1e308], dtype=torch.float64)
    q = quantize(x)
    assert torch.isfinite(q.scale) and torch.isfinite(dequantize(q)).all()


def torch_codes(x: torch.Tensor, q: QuantizedTensor) -> torch.Tensor:
    """The codes implied by PyTorch's fake-quantize kernel for the same parameters."""
    if q.axis is None:
        fq = torch.fake_quantize_per_tensor_affine(
            x, float(q.scale), int(q.zero_point), q.qmin, q.qmax
        )
    else:
        fq = torch.fake_quantize_per_channel_affine(
            x, q.scale, q.zero_point, q.axis, q.qmin, q.qmax
        )
    s = per_element(q.scale, x, q.axis)
    z = per_element(q.zero_point, x, q.axis)
    return (torch.round(fq.to(torch.float64) / s) + z).to(torch.int32)


@given(
    cases(
        dtypes=(torch.float32,),
        bits=st.just(8),
        tensors={torch.float32: float_tensors(min_value=-1e30, max_value=1e30)},
    )
)
def test_codes_match_pytorch_fake_quantize_except_at_near_ties(case):
    x, kwargs = case
    q = quantize(x, **kwargs)
    # PyTorch multiplies by 1 / scale in float32, which overflows for a subnormal scale
    # (a subnormal constant); its own observers never choose a scale that small.
    assume(bool(torch.isfinite(1 / q.scale).all()))
    theirs = torch_codes(x, q)
    differ = theirs != q.codes
    if differ.any():
        # float32 x * (1 / scale) + zero_point carries ~3 roundings of 2**-24 relative to
        # |x / scale| + |zero_point|; a code can differ only if a .5 tie lies that close.
        t = x.to(torch.float64) / per_element(q.scale, x, q.axis)
        z = per_element(q.zero_point, x, q.axis).abs()
        tie_distance = ((t - t.floor()) - 0.5).abs()
        tolerance = 4 * 2.0**-24 * (t.abs() + z + 1)
        assert ((theirs - q.codes).abs() <= 1).all()
        assert (tie_distance <= tolerance)[differ].all(), x[differ]


def test_ties_round_half_to_even_like_pytorch():
    x = torch.tensor([0.5, 1.5, 2.5, 3.5, -0.5, -1.5, -2.5])
    expected = torch.tensor([0, 2, 2, 4, 0, -2, -2], dtype=torch.int32)
    assert torch.equal(torch.round(x), expected.to(torch.float32))
    ours = quantize_with(x, torch.tensor(1.0), torch.tensor(0), qmin=-128, qmax=127)
    assert torch.equal(ours, expected)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        theirs = torch.fake_quantize_per_tensor_affine(x, 1.0, 0, -128, 127)
        per_channel = torch.fake_quantize_per_channel_affine(
            x.reshape(1, -1),
            torch.tensor([1.0]),
            torch.tensor([0], dtype=torch.int32),
            0,
            -128,
            127,
        )
    assert caught == []
    assert torch.equal(theirs, expected.to(torch.float32))
    assert torch.equal(per_channel.reshape(-1), expected.to(torch.float32))
    # Scale 0.25 is a power of two, so x / scale is exact and lands on the same ties.
    quarter = quantize_with(x / 4, torch.tensor(0.25), torch.tensor(0), qmin=-128, qmax=127)
    assert torch.equal(quarter, expected)


@pytest.mark.parametrize("bits", [0, 1, 17, -8, 2.0, 8.0, True, "8", None])
def test_bad_bits_are_rejected_with_the_allowed_range(bits):
    x = torch.ones(3)
    with pytest.raises(ValueError, match=r"bits must be an integer from 2 to 16"):
        quantize(x, bits=bits)
    with pytest.raises(ValueError, match=r"bits must be an integer from 2 to 16"):
        fake_quantize(x, bits=bits)


@given(TENSORS[torch.float32], st.data())
def test_nan_and_infinity_are_reported_with_name_and_count(x, data):
    x = x.clone()
    bad = data.draw(st.sets(st.integers(0, x.numel() - 1), min_size=1), label="positions")
    for i in bad:
        x.view(-1)[i] = data.draw(st.sampled_from([math.nan, math.inf, -math.inf]))
    plural = "s" if len(bad) > 1 else ""
    message = rf"encoder\.layers\.0\.weight has {len(bad)} NaN or infinite value{plural} "
    with pytest.raises(ValueError, match=message):
        quantize(x, name="encoder.layers.0.weight")
    with pytest.raises(ValueError, match=message):
        fake_quantize(x, axis=0 if x.dim() else None, name="encoder.layers.0.weight")


def test_integer_tensors_are_rejected():
    with pytest.raises(ValueError, match="floating-point"):
        quantize(torch.arange(4))


@pytest.mark.parametrize(
    ("shape", "axis"),
    [((2, 3), 2), ((2, 3), -3), ((4,), 1), ((), 0), ((2, 3), 1.0), ((2, 3), True), ((2,), "0")],
)
def test_bad_axis_is_rejected(shape, axis):
    with pytest.raises(ValueError, match="axis"):
        quantize(torch.ones(shape), axis=axis)


@given(cases())
def test_fake_quantize_keeps_dtype_and_shape_and_leaves_the_input_alone(case):
    x, kwargs = case
    before = x.clone()
    fq = fake_quantize(x, **kwargs)
    assert fq.dtype == x.dtype and fq.shape == x.shape
    assert torch.equal(torch.signbit(x), torch.signbit(before)) and torch.equal(x, before)
    assert fq.data_ptr() != x.data_ptr()


@pytest.mark.parametrize("bits", range(2, 17))
def test_quant_range_has_two_to_the_bits_levels(bits):
    affine, symmetric = quant_range(bits, symmetric=False), quant_range(bits, symmetric=True)
    assert affine == (0, 2**bits - 1)
    assert symmetric == (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1)
