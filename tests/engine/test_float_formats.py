"""fp16, bf16 and fp8 weights: bit-identical to torch's casts, fp8 scaled per channel as
torchao's float8 weight-only does, overflow an error naming the layer, zeros kept."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from pytest_compress.engine.apply import compress_model, quantize_model
from pytest_compress.engine.record import get_record
from pytest_compress.engine.specs import QuantSpec, as_quant_spec
from pytest_compress.errors import ModelError, SpecError
from tests.models import Net, seeded


def weights(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: m.weight.detach() for n, m in model.named_modules() if hasattr(m, "weight")}


@pytest.mark.parametrize(
    ("shorthand", "dtype"), [("fp16", torch.float16), ("bf16", torch.bfloat16)]
)
def test_half_formats_are_torch_casts_bit_for_bit(shorthand, dtype):
    model = seeded(Net())
    compressed = quantize_model(model, shorthand)
    for name, weight in weights(model).items():
        expected = weight.to(dtype).to(torch.float32)
        assert torch.equal(weights(compressed)[name].view(torch.int32), expected.view(torch.int32))
        assert get_record(compressed).quantized[f"{name}.weight"].format == shorthand


@pytest.mark.parametrize(
    ("shorthand", "dtype", "largest"),
    [("fp8", torch.float8_e4m3fn, 448.0), ("fp8-e5m2", torch.float8_e5m2, 57344.0)],
)
def test_fp8_scales_each_channel_by_its_amax(shorthand, dtype, largest):
    model = seeded(Net())
    compressed = quantize_model(model, shorthand)
    for name, weight in weights(model).items():
        flat = weight.reshape(weight.shape[0], -1)
        scale = (flat.abs().amax(dim=1).double() / largest).float()
        view = (-1,) + (1,) * (weight.dim() - 1)
        stored = (weight / scale.reshape(view)).clamp(-largest, largest).to(dtype)
        expected = stored.to(torch.float32) * scale.reshape(view)
        assert torch.equal(weights(compressed)[name], expected), name
        assert torch.equal(get_record(compressed).quantized[f"{name}.weight"].scale, scale)


def test_fp8_per_tensor_has_one_scale():
    compressed = quantize_model(nn.Linear(8, 4), QuantSpec(format="fp8", per_channel=False))
    assert get_record(compressed).quantized["weight"].scale.shape == ()


def test_overflow_and_nan_are_errors_naming_the_layer():
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2))
    with torch.no_grad():
        model[1].weight[0, 0] = 1e5
    with pytest.raises(ModelError, match=r"1\.weight: 1 weight overflows fp16"):
        quantize_model(model, "fp16")
    assert quantize_model(model, "bf16") is not None  # bf16 has float32's range
    with torch.no_grad():
        model[1].weight[0, 0] = float("nan")
    for shorthand in ("fp16", "fp8"):
        with pytest.raises(ModelError, match=r"1\.weight has 1 NaN"):
            quantize_model(model, shorthand)


@pytest.mark.parametrize("shorthand", ["fp16", "bf16", "fp8", "fp8-e5m2"])
def test_float_formats_keep_pruned_zeros(shorthand):
    compressed = compress_model(seeded(Net()), quantize=shorthand, prune=0.7)
    pruned = compress_model(seeded(Net()), prune=0.7)
    for name, weight in weights(pruned).items():
        assert torch.equal(weights(compressed)[name] == 0, weight == 0), name


@pytest.mark.parametrize(
    "kwargs",
    [
        {"format": "fp8", "symmetric": False},
        {"format": "fp16", "bits": 4},
        {"format": "fp16", "group_size": 128},
        {"format": "bf16", "per_channel": False},
        {"format": "bf16", "scale_dtype": "float16"},
        {"format": "fp8", "method": "gptq"},
        {"format": "fp8-e5m2", "activation_bits": 8},
        {"format": "fp4"},
    ],
)
def test_nonsensical_float_options_are_spec_errors(kwargs):
    with pytest.raises(SpecError, match="format"):
        QuantSpec(**kwargs)


def test_float_specs_normalise_and_describe_themselves():
    assert as_quant_spec("fp8") == QuantSpec(format="fp8-e4m3") == QuantSpec(format="fp8")
    assert QuantSpec(format="fp16").bits == 16 and QuantSpec(format="fp8").symmetric
    assert as_quant_spec("bf16").describe() == "bf16"
    assert as_quant_spec("fp8-e5m2").describe() == "fp8 e5m2 per-channel"


def test_the_default_path_raises_no_deprecation_warning():
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        for shorthand in ("fp16", "bf16", "fp8", "fp8-e5m2", "int4-g32", "int4-mse"):
            quantize_model(seeded(Net()), shorthand)
