"""Group-wise quantization, held against a reference written here in float64 NumPy: each
group of G consecutive inputs of an output channel gets its own scale (rounded up to the
stored dtype) and zero point."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from pytest_compress.engine.apply import quantize_model
from pytest_compress.engine.quant import (
    compute_qparams,
    fake_quantize,
    fake_quantize_with,
    quant_range,
    quantize,
)
from pytest_compress.engine.record import get_record
from pytest_compress.engine.specs import QuantSpec, as_quant_spec
from pytest_compress.errors import ModelError, SpecError
from pytest_compress.strategies import float_tensors

SCALE_DTYPES = (torch.float16, torch.bfloat16)


def round_up(value: float, dtype: torch.dtype) -> float:
    """The smallest ``dtype`` value not below ``value`` (a positive float)."""
    rounded = torch.tensor(value, dtype=torch.float64).to(dtype)
    if float(rounded) < value:
        rounded = torch.nextafter(rounded, torch.tensor(math.inf, dtype=dtype))
    return float(rounded)


def reference(x: np.ndarray, bits: int, symmetric: bool, group: int, dtype: torch.dtype):
    """(scales, zero points, values) of each (channel, group) of a (C, K) matrix."""
    qmin, qmax = quant_range(bits, symmetric=symmetric)
    channels, inputs = x.shape
    groups = math.ceil(inputs / group)
    scales, zeros = np.zeros((channels, groups)), np.zeros((channels, groups), dtype=np.int64)
    values = np.zeros_like(x)
    for c in range(channels):
        for g in range(groups):
            part = x[c, g * group : (g + 1) * group]
            lo, hi = min(part.min(), 0.0), max(part.max(), 0.0)
            if part.min() == part.max():
                s = abs(float(part[0]))
            elif symmetric:
                s = max(-lo, hi) / ((qmax - qmin) / 2)
            else:
                s = (hi - lo) / (qmax - qmin)
            s = round_up(s if s > 0 else 1.0, dtype)
            z = 0 if symmetric else int(np.clip(qmin - np.round(lo / s), qmin, qmax))
            codes = np.clip(np.round(part / s) + z, qmin, qmax)
            scales[c, g], zeros[c, g] = s, z
            values[c, g * group : (g + 1) * group] = (codes - z) * s
    return scales, zeros, values


MATRICES = float_tensors(
    shape=st.tuples(st.integers(1, 4), st.integers(1, 12)), min_value=-1e3, max_value=1e3
)


@st.composite
def group_cases(draw):
    x = draw(MATRICES)
    return x, {
        "bits": draw(st.integers(2, 8)),
        "symmetric": draw(st.booleans()),
        "group_size": draw(st.integers(1, x.shape[1] + 2)),
        "scale_dtype": draw(st.sampled_from(SCALE_DTYPES)),
    }


@given(group_cases())
@settings(max_examples=200)
def test_group_scales_and_zero_points_match_the_reference(case):
    x, kwargs = case
    scale, zero_point, _ = compute_qparams(x, axis=0, **kwargs)
    ref_scale, ref_zero, _ = reference(
        x.double().numpy(),
        kwargs["bits"],
        kwargs["symmetric"],
        kwargs["group_size"],
        kwargs["scale_dtype"],
    )
    assert scale.dtype == kwargs["scale_dtype"]
    assert np.array_equal(scale.double().numpy(), ref_scale)
    assert np.array_equal(zero_point.numpy(), ref_zero)


@given(group_cases())
@settings(max_examples=200)
def test_every_element_is_within_half_a_step_of_its_groups_grid(case):
    x, kwargs = case
    q = quantize(x, axis=0, **kwargs)
    fq = fake_quantize(x, axis=0, **kwargs).double().numpy()
    scales, _, ref_values = reference(
        x.double().numpy(),
        kwargs["bits"],
        kwargs["symmetric"],
        kwargs["group_size"],
        kwargs["scale_dtype"],
    )
    step = np.repeat(scales, kwargs["group_size"], axis=1)[:, : x.shape[1]]
    error = np.abs(fq - x.double().numpy())
    # the rounded-up scale leaves the range inside the grid: half a step, plus float32's
    # rounding of the quotient and the product
    assert (error <= step / 2 * (1 + 1e-6) + 1e-45).all()
    # on the grid: the reference's values, but where x / s lies within rounding of a tie
    near_tie = np.abs(np.abs(fq - ref_values) - step) < step * 1e-5
    assert ((np.abs(fq - ref_values) <= np.abs(ref_values) * 1e-7) | near_tie).all()
    assert q.scale.shape == (x.shape[0], math.ceil(x.shape[1] / kwargs["group_size"]))


@given(group_cases(), st.data())
def test_exact_zeros_stay_exactly_zero(case, data):
    x, kwargs = case
    zeros = data.draw(st.lists(st.integers(0, x.numel() - 1), max_size=x.numel()))
    x = x.clone()
    x.view(-1)[zeros] = 0.0
    fq = fake_quantize(x, axis=0, **kwargs)
    assert (fq.view(-1)[zeros] == 0).all()


@given(group_cases())
def test_rounding_again_with_the_same_parameters_changes_nothing(case):
    x, kwargs = case
    scale, zero_point, _ = compute_qparams(x, axis=0, **kwargs)
    qmin, qmax = quant_range(kwargs["bits"], symmetric=kwargs["symmetric"])
    params = {"qmin": qmin, "qmax": qmax, "axis": 0, "group_size": kwargs["group_size"]}
    once = fake_quantize_with(x, scale, zero_point, **params)
    assert torch.equal(fake_quantize_with(once, scale, zero_point, **params), once)


@given(
    float_tensors(shape=st.tuples(st.integers(1, 3), st.integers(1, 3), st.integers(1, 3))),
    st.integers(2, 8),
    st.booleans(),
    st.sampled_from((torch.float32, torch.float64)),
)
def test_one_group_per_channel_is_per_channel_exactly(x, bits, symmetric, dtype):
    x = x.to(dtype)
    inputs = x.shape[1] * x.shape[2]
    grouped = quantize(x, bits=bits, symmetric=symmetric, axis=0, group_size=inputs)
    channel = quantize(x, bits=bits, symmetric=symmetric, axis=0)
    assert torch.equal(grouped.scale.reshape(-1), channel.scale)
    assert torch.equal(grouped.codes, channel.codes)
    same = fake_quantize(x, bits=bits, symmetric=symmetric, axis=0, group_size=inputs)
    assert torch.equal(same, fake_quantize(x, bits=bits, symmetric=symmetric, axis=0))


def test_conv_groups_run_along_the_flattened_inputs_with_a_ragged_last_group():
    weight = torch.randn(4, 3, 3, 3, generator=torch.Generator().manual_seed(0))
    half = torch.float16
    q = quantize(weight, bits=4, axis=0, group_size=8, scale_dtype=half)
    assert q.scale.shape == (4, 4)  # 27 inputs: 8 + 8 + 8 + 3
    flat = weight.reshape(4, 27)
    scale, _, values = reference(flat.double().numpy(), 4, False, 8, torch.float16)
    fq = fake_quantize(weight, bits=4, axis=0, group_size=8, scale_dtype=half).reshape(4, 27)
    assert np.allclose(fq.double().numpy(), values, rtol=1e-6, atol=0)
    assert np.array_equal(q.scale.to(torch.float16).double().numpy(), scale)


def test_a_scale_beyond_float16_is_an_error_naming_the_tensor():
    x = torch.tensor([[0.0, 3e7]])  # 3e7 / 255 > 65504
    with pytest.raises(ModelError, match=r"fc\.weight.*overflows float16.*float32"):
        compute_qparams(x, axis=0, group_size=2, scale_dtype=torch.float16, name="fc.weight")


@pytest.mark.parametrize("group_size", [0, -4, 2.5, True, "128"])
def test_a_bad_group_size_is_a_spec_error(group_size):
    with pytest.raises(SpecError, match="group_size"):
        QuantSpec(bits=4, group_size=group_size)


def test_a_group_larger_than_a_layers_inputs_is_an_error_naming_it_unless_allowed():
    model = nn.Sequential(nn.Linear(256, 8), nn.Linear(8, 4))
    with pytest.raises(SpecError, match=r"group_size=128.*'?1\.weight \(8 inputs"):
        quantize_model(model, "int4-g128")
    allowed = quantize_model(model, QuantSpec(bits=4, group_size=128, allow_short_rows=True))
    record = get_record(allowed).quantized
    assert record["0.weight"].scale.shape == (8, 2)
    assert record["1.weight"].scale.shape == (4, 1)


def test_shorthands_and_words():
    spec = as_quant_spec("int4-g128")
    assert (spec.bits, spec.group_size, spec.method) == (4, 128, "rtn")
    assert spec.describe() == "int4 g128"
    assert as_quant_spec("int3-g32-gptq").describe() == "int3 g32, gptq"
    assert as_quant_spec("int4-mse").describe() == "int4 per-channel, mse"
    wide = QuantSpec(bits=4, group_size=64, scale_dtype="float32")
    assert wide.describe() == "int4 g64 (float32 scales)"
    with pytest.raises(SpecError, match="per_channel=False"):
        QuantSpec(bits=4, group_size=64, per_channel=False)
    with pytest.raises(SpecError, match="scale_dtype"):
        QuantSpec(bits=4, group_size=64, scale_dtype="float8")


def test_the_model_keeps_its_weights_and_the_copy_uses_float16_scales():
    model = nn.Linear(300, 5)
    before = model.weight.detach().clone()
    compressed = quantize_model(model, "int4-g128")
    assert torch.equal(model.weight, before)
    params = get_record(compressed).quantized["weight"]
    assert params.scale.dtype == torch.float16 and params.scale.shape == (5, 3)
    assert params.group_size == 128
