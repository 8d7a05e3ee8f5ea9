"""Float activation formats: each selected layer's output rounded to fp16, bf16 or fp8 at
run time, through the activation-hook mechanism (no calibration), and kept by the file."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from pytest_compress import QuantSpec, compress_model, load_compressed, save_compressed
from pytest_compress.engine.activations import ActivationFloatCast, activation_hooks
from pytest_compress.errors import SpecError


def mlp() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4)).eval()


X = torch.randn(5, 8, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("fmt", ["fp16", "bf16"])
def test_half_formats_round_each_output_as_torch_casts_it(fmt) -> None:
    model = mlp()
    compressed = compress_model(model, quantize=QuantSpec(bits=8, activation_format=fmt))
    weights_only = compress_model(model, quantize="int8")
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}[fmt]
    with torch.no_grad():
        hidden = weights_only[0](X).to(dtype).float()
        expected = weights_only[2](torch.relu(hidden)).to(dtype).float()
        assert torch.equal(compressed(X), expected)
    assert [type(h) for _, h in activation_hooks(compressed)] == [ActivationFloatCast] * 2
    assert not list(activation_hooks(model))


def test_fp8_scales_each_output_by_its_largest_magnitude() -> None:
    model = mlp()
    compressed = compress_model(model, quantize=QuantSpec(format="bf16", activation_format="fp8"))
    with torch.no_grad():
        out = compressed[0](X)
        raw = nn.functional.linear(X, compressed[0].weight, compressed[0].bias)
    scale = raw.abs().max() / 448
    expected = (raw / scale).to(torch.float8_e4m3fn).float() * scale
    assert torch.allclose(out, expected, rtol=0, atol=1e-6)
    assert (out / scale).abs().max() <= 448 * (1 + 1e-6)


def test_the_file_keeps_the_float_activation_hooks(tmp_path) -> None:
    compressed = compress_model(mlp(), quantize=QuantSpec(bits=4, activation_format="fp8-e5m2"))
    save_compressed(compressed, tmp_path / "m.ptc")
    loaded = load_compressed(tmp_path / "m.ptc", mlp())
    assert [(n, h.format) for n, h in activation_hooks(loaded)] == [
        ("0", "fp8-e5m2"),
        ("2", "fp8-e5m2"),
    ]
    with torch.no_grad():
        assert torch.equal(loaded(X), compressed(X))


def test_words_and_refusals() -> None:
    spec = QuantSpec(bits=8, activation_format="fp8")
    assert spec.activation_format == "fp8-e4m3" and not spec.needs_calibration
    assert spec.describe() == "int8 per-channel, activations fp8 e4m3"
    with pytest.raises(SpecError, match="activation_bits .* or activation_format .* not both"):
        QuantSpec(bits=8, activation_bits=8, activation_format="bf16")
    with pytest.raises(SpecError, match="activation_format must be None or one of"):
        QuantSpec(bits=8, activation_format="int8")
