"""The public Hypothesis strategies produce what they promise and reject bad arguments."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import Phase, find, given, settings
from hypothesis import strategies as st
from hypothesis.errors import InvalidArgument

import pytest_compress.strategies as strategies
from pytest_compress.engine.specs import OBSERVERS, PruneSpec, QuantSpec
from pytest_compress.strategies import float_tensors, prune_specs, quant_specs

DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
# Whether a case turns up at all, not its minimal form: skip shrinking.
FIRST_FOUND = settings(max_examples=2000, phases=[Phase.generate])


def test_public_names():
    assert sorted(strategies.__all__) == ["float_tensors", "prune_specs", "quant_specs"]


@given(st.data(), st.sampled_from(DTYPES))
def test_float_tensors_are_finite_within_bounds_and_of_the_dtype(data, dtype):
    x = data.draw(float_tensors(dtype=dtype, min_value=-3.5, max_value=1e30))
    assert isinstance(x, torch.Tensor) and x.dtype == dtype
    assert 1 <= x.dim() <= 4 and all(1 <= n <= 5 for n in x.shape)
    assert torch.isfinite(x).all()
    assert (x >= -3.5).all() and (x <= 1e30).all()


@given(float_tensors(dtype=torch.float16))
def test_default_bounds_are_shrunk_to_what_float16_can_hold(x):
    assert torch.isfinite(x).all() and (x.abs() <= 65504).all()


@given(float_tensors(dtype=torch.bfloat16, min_value=0.1, max_value=0.2))
def test_bounds_between_bfloat16_values_are_rounded_inward(x):
    assert (x >= 0.1).all() and (x <= 0.2).all()


@given(st.data())
def test_shape_may_be_fixed_or_a_strategy(data):
    assert data.draw(float_tensors(shape=(2, 3))).shape == (2, 3)
    assert data.draw(float_tensors(shape=4)).shape == (4,)
    assert data.draw(float_tensors(shape=())).shape == ()
    assert data.draw(float_tensors(shape=st.sampled_from([(1,), (7, 2)]))).shape in [(1,), (7, 2)]


@given(float_tensors(shape=(3,), dtype=torch.float64, elements=st.sampled_from([-2.5, 4.0])))
def test_elements_replace_the_built_in_mix(x):
    assert x.dtype == torch.float64 and set(x.tolist()) <= {-2.5, 4.0}


def test_elements_that_are_not_finite_are_rejected_when_drawn():
    strategy = float_tensors(shape=(2,), elements=st.just(math.nan))
    with pytest.raises(InvalidArgument, match="finite"):
        find(strategy, lambda x: True)


NASTY = {
    "constant": lambda x: x.numel() > 1 and (x == x.flatten()[0]).all() and (x != 0).all(),
    "all zero": lambda x: x.numel() > 1 and (x == 0).all(),
    "single element": lambda x: x.numel() == 1,
    "tiny": lambda x: (x != 0).any() and x.abs().max() <= 1e-30,
    "subnormal": lambda x: ((x != 0) & (x.abs() < torch.finfo(x.dtype).tiny)).any(),
    "huge": lambda x: x.abs().max() >= 1e29,
    "many ties": lambda x: x.numel() >= 6 and 1 < x.unique().numel() <= 2,
    "both signs": lambda x: (x < 0).any() and (x > 0).any(),
    "ends at the bounds": lambda x: x.min() == -1e30 and x.max() == 1e30,
}


@pytest.mark.parametrize("case", NASTY)
def test_float_tensors_find_the_nasty_cases(case):
    strategy = float_tensors(min_value=-1e30, max_value=1e30, dtype=torch.float64)
    found = find(strategy, lambda x: bool(NASTY[case](x)), settings=FIRST_FOUND)
    assert NASTY[case](found)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"dtype": torch.int32}, "dtype"),
        ({"dtype": "float32"}, "dtype"),
        ({"min_value": 2.0, "max_value": 1.0}, "min_value"),
        ({"min_value": math.nan}, "min_value"),
        ({"max_value": math.inf}, "max_value"),
        ({"max_value": True}, "max_value"),
        ({"min_value": 1e-10, "max_value": 2e-10, "dtype": torch.float16}, "no torch.float16"),
        ({"shape": (2, -1)}, "shape"),
        ({"shape": "3"}, "shape"),
        ({"elements": [1.0]}, "elements"),
    ],
)
def test_float_tensors_rejects_bad_arguments(kwargs, message):
    with pytest.raises(InvalidArgument, match=message):
        float_tensors(**kwargs)


@given(quant_specs(min_bits=3, max_bits=5))
def test_quant_specs_respect_the_bit_range_and_leave_activations_alone(spec):
    assert isinstance(spec, QuantSpec)
    assert 3 <= spec.bits <= 5
    assert spec.activation_bits is None and not spec.quantizes_activations


@given(quant_specs(min_bits=8, max_bits=8, activations=True))
def test_quant_specs_with_activations_always_quantize_them(spec):
    assert spec.bits == 8 and spec.activation_bits == 8
    assert spec.observer in OBSERVERS and 50 < spec.percentile <= 100


def test_quant_specs_cover_the_options():
    for condition in (
        lambda s: s.symmetric,
        lambda s: not s.per_channel,
        lambda s: s.parameters == "all",
        lambda s: s.bits == 2,
        lambda s: s.bits == 16,
    ):
        assert condition(find(quant_specs(), condition, settings=FIRST_FOUND))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"min_bits": 1}, "min_bits"),
        ({"max_bits": 17}, "max_bits"),
        ({"min_bits": 8.0}, "min_bits"),
        ({"max_bits": True}, "max_bits"),
        ({"min_bits": 9, "max_bits": 8}, "min_bits"),
        ({"activations": "yes"}, "activations"),
    ],
)
def test_quant_specs_rejects_bad_arguments(kwargs, message):
    with pytest.raises(InvalidArgument, match=message):
        quant_specs(**kwargs)


@given(prune_specs(min_amount=0.3, max_amount=0.6))
def test_prune_specs_are_valid_and_respect_the_amount_range(spec):
    assert isinstance(spec, PruneSpec) and spec.prunes_weights
    assert spec.structure in ("unstructured", "channel", "2:4")
    assert spec.amount is None or 0.3 <= spec.amount <= 0.6
    assert spec.threshold is None or 0 <= spec.threshold <= 1
    assert spec.activation_threshold is None


@given(prune_specs(structures=["1:4"], activations=True))
def test_prune_specs_with_activations_always_prune_them(spec):
    assert spec.n_m == (1, 4)
    assert spec.activation_threshold is not None and 0 <= spec.activation_threshold <= 1


def test_prune_specs_cover_every_way_of_choosing_weights():
    for condition in (
        lambda s: s.scope == "global",
        lambda s: s.threshold is not None and s.structure == "unstructured",
        lambda s: s.structure == "channel" and s.amount is not None and s.norm == "l2",
        lambda s: s.structure == "channel" and s.threshold is not None,
        lambda s: s.n_m == (2, 4),
    ):
        assert condition(find(prune_specs(), condition, settings=FIRST_FOUND))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"min_amount": 0}, "min_amount"),
        ({"max_amount": 1}, "max_amount"),
        ({"min_amount": 0.8, "max_amount": 0.5}, "min_amount"),
        ({"min_amount": math.nan}, "min_amount"),
        ({"structures": []}, "structures"),
        ({"structures": "2:4"}, "structures"),
        ({"structures": ["bogus"]}, "structures"),
        ({"structures": ["4:2"]}, "structures"),
        ({"activations": 1}, "activations"),
    ],
)
def test_prune_specs_rejects_bad_arguments(kwargs, message):
    with pytest.raises(InvalidArgument, match=message):
        prune_specs(**kwargs)


def test_quant_specs_cover_group_sizes_methods_and_scale_dtypes():
    for condition in (
        lambda s: s.group_size == 32 and s.allow_short_rows,
        lambda s: s.group_size is None and not s.per_channel,
        lambda s: s.method == "mse",
        lambda s: s.scale_dtype == "bfloat16",
    ):
        assert condition(find(quant_specs(), condition, settings=FIRST_FOUND))


@given(quant_specs(formats=("int", "fp16", "bf16", "fp8-e4m3", "fp8-e5m2"), methods=("gptq",)))
def test_quant_specs_draw_float_formats_when_asked(spec):
    assert isinstance(spec, QuantSpec)
    if spec.is_float:
        assert spec.bits in (8, 16) and spec.symmetric and spec.method == "rtn"
    else:
        assert spec.method == "gptq" and spec.needs_calibration


def test_quant_specs_find_each_float_format():
    specs = quant_specs(formats=("fp16", "bf16", "fp8-e4m3", "fp8-e5m2"))
    for fmt in ("fp16", "bf16", "fp8-e4m3", "fp8-e5m2"):
        assert find(specs, lambda s, f=fmt: s.format == f, settings=FIRST_FOUND).format == fmt


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"group_sizes": ()}, "group_sizes"),
        ({"group_sizes": (0,)}, "group_sizes"),
        ({"methods": ("round",)}, "methods"),
        ({"formats": "fp16"}, "formats"),
        ({"formats": ("fp4",)}, "formats"),
        ({"formats": ("fp16",), "activations": True}, "activations"),
    ],
)
def test_quant_specs_reject_bad_new_arguments(kwargs, message):
    with pytest.raises(InvalidArgument, match=message):
        quant_specs(**kwargs).example()
