"""Transformer-aware recipes: the @embeddings / @head presets, dynamic per-token activation
quantization ("w8a8-dynamic"), and calibration that skips padded tokens."""

from __future__ import annotations

from collections import OrderedDict

import pytest
import torch
from torch import nn

from pytest_compress.engine.activations import (
    ActivationDynamicQuantize,
    ActivationFakeQuantize,
    activation_hooks,
    per_token_fake_quantize,
)
from pytest_compress.engine.apply import compress_model
from pytest_compress.engine.layers import (
    compressible_layers,
    output_head,
    preset_members,
    skipped_layers,
)
from pytest_compress.engine.specs import TRANSFORMER_EXCLUDE, QuantSpec, as_quant_spec
from pytest_compress.errors import ModelError, SpecError
from pytest_compress.fileformat.container import load_compressed, save_compressed
from tests.models import TiedEmbeddingModel, seeded


class TokenModel(nn.Module):
    """A tiny encoder shape: embedding, two projections, a classifier head, on dict batches."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(20, 8)
        self.proj = nn.Linear(8, 16)
        self.mix = nn.Linear(16, 8)
        self.head = nn.Linear(8, 3)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.mix(torch.relu(self.proj(self.embed(input_ids))))
        return self.head(hidden)


def token_batch(seed: int = 0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, 20, (4, 6), generator=generator)
    mask = torch.ones_like(ids)
    mask[:, 4:] = 0
    return {"input_ids": ids * mask, "attention_mask": mask}


# --- presets ---------------------------------------------------------------------------


def test_presets_name_the_embeddings_and_the_head() -> None:
    model = seeded(TokenModel())
    assert preset_members(model, TRANSFORMER_EXCLUDE) == {"embed": "@embeddings", "head": "@head"}
    kept = [layer.name for layer in compressible_layers(model, exclude=TRANSFORMER_EXCLUDE)]
    assert kept == ["proj", "mix"]
    only = [layer.name for layer in compressible_layers(model, include=("@embeddings",))]
    assert only == ["embed"]


def test_a_hugging_face_head_is_what_get_output_embeddings_returns() -> None:
    model = seeded(TokenModel())
    model.get_output_embeddings = lambda: model.proj  # the head need not be registered last
    assert output_head(model) == "proj"


def test_a_head_tied_to_the_embedding_keeps_both_float() -> None:
    model = seeded(TiedEmbeddingModel())
    assert preset_members(model, ("@head",)) == {"embed": "@head", "out": "@head"}
    assert [layer.name for layer in compressible_layers(model, exclude=("@head",))] == ["hidden"]
    compressed = compress_model(model, quantize=QuantSpec(bits=4, exclude=("@head",)))
    assert torch.equal(compressed.embed.weight, model.embed.weight)
    assert not torch.equal(compressed.hidden.weight, model.hidden.weight)


def test_the_report_says_which_preset_left_a_layer_float() -> None:
    model = seeded(TokenModel())
    members = preset_members(model, TRANSFORMER_EXCLUDE)
    skipped = skipped_layers(model, {"proj", "mix"}, members)
    assert skipped["embed"].startswith("left float by the @embeddings preset")
    assert skipped["head"].startswith("left float by the @head preset")


def test_a_preset_that_matches_nothing_excludes_nothing_and_includes_nothing() -> None:
    model = seeded(nn.Sequential(OrderedDict(a=nn.Linear(4, 4), b=nn.Linear(4, 2))))
    assert [layer.name for layer in compressible_layers(model, exclude=("@embeddings",))] == [
        "a",
        "b",
    ]
    assert compressible_layers(model, include=("@embeddings",)) == []
    with pytest.raises(ModelError, match="no compressible layer matching include"):
        compress_model(model, quantize=QuantSpec(bits=8, include=("@embeddings",)))


def test_an_unknown_preset_is_a_spec_error_naming_the_presets() -> None:
    with pytest.raises(SpecError, match="unknown preset '@embedding'.*@embeddings.*@head"):
        QuantSpec(bits=8, exclude=("@embedding",))


# --- dynamic per-token activations ------------------------------------------------------


def test_the_shorthand_and_its_words() -> None:
    spec = as_quant_spec("w8a8-dynamic")
    assert spec == QuantSpec(bits=8, activation_bits=8, observer="dynamic")
    assert spec.describe() == "w8a8 (dynamic per-token) per-channel"
    assert spec.quantizes_activations and not spec.needs_calibration
    assert as_quant_spec("w8a8").needs_calibration


def test_per_token_rounding_equals_torchs_per_channel_kernel_row_by_row() -> None:
    x = torch.randn(3, 5, 16, generator=torch.Generator().manual_seed(1)) * 4
    rounded = per_token_fake_quantize(x, 8)
    rows = x.reshape(-1, 16)
    scale = rows.abs().amax(dim=1).double() / 127.5  # symmetric: the largest magnitude
    expected = torch.fake_quantize_per_channel_affine(
        rows, scale.float(), torch.zeros(len(rows), dtype=torch.int32), 0, -128, 127
    )
    assert torch.allclose(rounded.reshape(-1, 16), expected, atol=1e-6, rtol=0)
    # each token alone: scaling one token changes no other token's rounding
    louder = x.clone()
    louder[0, 0] *= 100
    again = per_token_fake_quantize(louder, 8)
    assert torch.equal(again.reshape(-1, 16)[1:], rounded.reshape(-1, 16)[1:])


def test_conv_inputs_are_rounded_per_position_across_channels() -> None:
    x = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(2))
    rounded = per_token_fake_quantize(x, 8, feature_axis=1)
    by_position = per_token_fake_quantize(x.movedim(1, -1), 8).movedim(-1, 1)
    assert torch.equal(rounded, by_position)


def test_w8a8_dynamic_needs_no_calibration_and_rounds_each_layers_input() -> None:
    model = seeded(
        nn.Sequential(OrderedDict(fc1=nn.Linear(8, 16), act=nn.ReLU(), fc2=nn.Linear(16, 4)))
    )
    before = {k: v.clone() for k, v in model.state_dict().items()}
    compressed = compress_model(model, quantize="w8a8-dynamic")
    hooks = list(activation_hooks(compressed))
    assert [(name, type(hook)) for name, hook in hooks] == [
        ("fc1", ActivationDynamicQuantize),
        ("fc2", ActivationDynamicQuantize),
    ]
    x = torch.randn(5, 8, generator=torch.Generator().manual_seed(3))
    weights_only = compress_model(model, quantize="int8")
    with torch.no_grad():
        hidden = torch.relu(weights_only.fc1(per_token_fake_quantize(x, 8)))
        expected = weights_only.fc2(per_token_fake_quantize(hidden, 8))
        assert torch.equal(compressed(x), expected)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert not list(activation_hooks(model))


def test_an_embeddings_integer_input_is_left_alone() -> None:
    model = seeded(TokenModel())
    compressed = compress_model(
        model, quantize=QuantSpec(bits=8, activation_bits=8, observer="dynamic")
    )
    batch = token_batch()
    with torch.no_grad():
        assert compressed(**batch).shape == (4, 6, 3)


def test_dynamic_hooks_survive_the_file(tmp_path) -> None:
    model = seeded(TokenModel())
    compressed = compress_model(
        model, quantize=QuantSpec(bits=8, activation_bits=8, observer="dynamic")
    )
    path = tmp_path / "model.pcz"
    save_compressed(compressed, path)
    loaded = load_compressed(path, seeded(TokenModel()))
    assert [(n, type(h), h.bits) for n, h in activation_hooks(loaded)] == [
        (n, type(h), h.bits) for n, h in activation_hooks(compressed)
    ]
    batch = token_batch()
    with torch.no_grad():
        assert torch.equal(loaded(**batch), compressed(**batch))


# --- calibration skips padding ------------------------------------------------------------


def test_static_ranges_are_observed_on_real_tokens_only() -> None:
    model = seeded(TokenModel())
    batch = token_batch()
    with torch.no_grad():
        model.embed.weight[0] = 1000.0  # the padding token's row: huge, and only on padding
    compressed = compress_model(
        model,
        quantize=QuantSpec(bits=8, activation_bits=8, include=("proj",)),
        calibration_data=[batch],
    )
    ((name, hook),) = activation_hooks(compressed)
    assert name == "proj" and isinstance(hook, ActivationFakeQuantize)
    with torch.no_grad():
        # calibration runs the copy whose weights are already rounded
        weight, bias = compressed.proj.weight, compressed.proj.bias
        projected = nn.functional.linear(model.embed(batch["input_ids"]), weight, bias)
        outputs = projected[batch["attention_mask"].bool()]
    low, high = min(float(outputs.min()), 0.0), max(float(outputs.max()), 0.0)
    assert abs(hook.scale - (high - low) / 255) <= 1e-6 * hook.scale
    # without the mask the padding's outputs (about a thousand times larger) would set it
    unmasked = compress_model(
        model,
        quantize=QuantSpec(bits=8, activation_bits=8, include=("proj",)),
        calibration_data=[
            {"input_ids": batch["input_ids"], "attention_mask": torch.ones(4, 6, dtype=torch.long)}
        ],
    )
    ((_, wide),) = activation_hooks(unmasked)
    assert wide.scale > 100 * hook.scale
