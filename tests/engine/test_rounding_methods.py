"""The rounding methods: MSE clipping never rounds worse than min/max; GPTQ lowers the
layer's output error on its calibration data, needs that data, and keeps pruned zeros."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from pytest_compress.engine.apply import compress_model, quantize_model
from pytest_compress.engine.clipping import mse_qparams
from pytest_compress.engine.quant import compute_qparams, fake_quantize_with, quant_range
from pytest_compress.engine.record import get_record
from pytest_compress.engine.specs import QuantSpec, as_quant_spec
from pytest_compress.errors import DataError
from pytest_compress.fileformat.container import load_compressed, save_compressed
from pytest_compress.strategies import float_tensors


def squared_error(x, bits, symmetric, group_size, choose):
    scale, zero_point, _ = choose(
        x, bits=bits, symmetric=symmetric, axis=0, name="w", group_size=group_size
    )
    qmin, qmax = quant_range(bits, symmetric=symmetric)
    fq = fake_quantize_with(
        x, scale, zero_point, qmin=qmin, qmax=qmax, axis=0, group_size=group_size
    )
    return ((fq.double() - x.double()) ** 2).reshape(x.shape[0], -1).sum(dim=1), fq


@given(
    float_tensors(
        shape=st.tuples(st.integers(1, 4), st.integers(1, 40)), min_value=-10, max_value=10
    ),
    st.integers(2, 6),
    st.booleans(),
    st.none() | st.integers(1, 16),
)
@settings(max_examples=100)
def test_mse_clipping_is_never_worse_per_channel_and_keeps_zeros(x, bits, symmetric, group):
    rtn, _ = squared_error(x, bits, symmetric, group, compute_qparams)
    mse, fq = squared_error(x, bits, symmetric, group, mse_qparams)
    if group is None:  # the search is per row: per channel, it cannot do worse there
        assert (mse <= rtn * (1 + 1e-6) + 1e-30).all()
    assert (fq[x == 0] == 0).all()


def correlated_inputs(n: int, features: int, seed: int = 0) -> torch.Tensor:
    """Inputs whose features are strongly correlated (one fixed 8-d subspace, samples drawn
    by ``seed``): where GPTQ's compensation pays."""
    basis = torch.randn(8, features, generator=torch.Generator().manual_seed(1234))
    generator = torch.Generator().manual_seed(seed)
    coefficients = torch.randn(n, 8, generator=generator)
    return coefficients @ basis + 0.1 * torch.randn(n, features, generator=generator)


def output_error(model: nn.Module, compressed: nn.Module, x: torch.Tensor) -> float:
    with torch.no_grad():
        reference = model(x)
        return float((compressed(x) - reference).norm() / reference.norm())


@pytest.mark.parametrize("group", [None, 16])
def test_gptq_beats_round_to_nearest_on_the_layer_output(group):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 8)).eval()
    data = [correlated_inputs(256, 64, seed) for seed in range(2)]
    held_out = correlated_inputs(256, 64, seed=5)
    spec = QuantSpec(bits=3, group_size=group)
    rtn = quantize_model(model, spec)
    gptq = quantize_model(model, QuantSpec(bits=3, group_size=group, method="gptq"), data)
    assert output_error(model, gptq, held_out) < 0.8 * output_error(model, rtn, held_out)


def test_gptq_on_convolutions_grouped_and_1d():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1, padding_mode="reflect"),
        nn.Conv2d(8, 8, 3, groups=4, stride=2),
        nn.Flatten(start_dim=2),
        nn.Conv1d(8, 4, 3, padding=1),
    ).eval()
    data = [torch.randn(4, 3, 12, 12).cumsum(dim=-1) for _ in range(2)]
    for spec in ("int3-gptq", "int3-g8-gptq"):
        gptq = quantize_model(model, spec, data)
        rtn = quantize_model(model, spec.replace("-gptq", ""))
        assert output_error(model, gptq, data[0]) < output_error(model, rtn, data[0])
    params = get_record(quantize_model(model, "int3-g8-gptq", data)).quantized
    assert params["1.weight"].scale.shape == (8, 3)  # 2 x 3 x 3 = 18 inputs: 8 + 8 + 2


def test_gptq_needs_calibration_data():
    assert as_quant_spec("int4-gptq").needs_calibration
    assert not as_quant_spec("int4-mse").needs_calibration
    with pytest.raises(DataError, match="GPTQ, which needs calibration_data"):
        quantize_model(nn.Linear(4, 2), "int4-gptq")


def test_gptq_keeps_pruned_zeros_and_round_trips_through_the_file(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 8)).eval()
    data = [correlated_inputs(128, 64)]
    pruned = compress_model(model, prune=0.6)
    both = compress_model(model, prune=0.6, quantize="int4-g16-gptq", calibration_data=data)
    for key in ("0.weight", "2.weight"):
        assert torch.equal(both.state_dict()[key] == 0, pruned.state_dict()[key] == 0)
    save_compressed(both, tmp_path / "m.ptcz")
    loaded = load_compressed(tmp_path / "m.ptcz", model)
    for key, value in both.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key


def test_layers_gptq_does_not_cover_are_rounded_to_nearest():
    model = nn.Sequential(nn.Embedding(10, 16), nn.Linear(16, 4))
    data = [torch.randint(0, 10, (8, 5))]
    gptq = quantize_model(model, "int4-gptq", data)
    rtn = quantize_model(model, "int4")
    assert torch.equal(gptq[0].weight, rtn[0].weight)
