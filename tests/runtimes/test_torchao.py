"""torchao: the deployed copy against quantize_ applied by hand, its file, its float layers."""

from __future__ import annotations

import copy
import os

import pytest
import torch
from torchao.quantization import (
    Int8DynamicActivationInt8WeightConfig,
    Int8WeightOnlyConfig,
    IntxWeightOnlyConfig,
    quantize_,
)
from torchao.quantization.granularity import PerAxis

from pytest_compress.engine.apply import prune_model
from pytest_compress.engine.specs import PruneSpec, QuantSpec
from pytest_compress.errors import CompressError, SpecError
from pytest_compress.runtimes import registry
from pytest_compress.runtimes.torchao_backend import deploy_torchao, load_torchao
from tests.models import Net, seeded
from tests.runtimes.conftest import mlp, same_state, state

# Each recipe and the config a user of torchao would write by hand for it.
RECIPES = {
    "int8": (QuantSpec(bits=8), lambda: Int8WeightOnlyConfig()),
    "w8a8": (QuantSpec(bits=8, activation_bits=8), lambda: Int8DynamicActivationInt8WeightConfig()),
    "int4": (
        QuantSpec(bits=4),
        lambda: IntxWeightOnlyConfig(weight_dtype=torch.int4, granularity=PerAxis(0)),
    ),
}


def by_hand(model: torch.nn.Module, config) -> torch.nn.Module:
    quantized = copy.deepcopy(model).eval()
    quantize_(quantized, config)
    return quantized


@pytest.mark.parametrize("recipe", RECIPES)
def test_deployed_equals_quantize_applied_by_hand(tmp_path, batch, recipe):
    spec, config = RECIPES[recipe]
    deployed = deploy_torchao(mlp(), spec, None, tmp_path)
    with torch.inference_mode():
        expected = by_hand(mlp(), config())(batch)
        reference = mlp()(batch)
    outputs = deployed.predict(batch)
    assert torch.equal(outputs, expected)
    error = (outputs - reference).abs().max() / reference.abs().max()
    assert 0 < error < (0.3 if recipe == "int4" else 0.05)  # quantized, and not broken
    assert deployed.kept_float == ()


@pytest.mark.parametrize("recipe", RECIPES)
def test_the_size_is_the_file_and_it_loads_back(tmp_path, batch, recipe):
    spec, _ = RECIPES[recipe]
    deployed = deploy_torchao(mlp(), spec, None, tmp_path)
    assert deployed.files == (tmp_path / "torchao_state_dict.pt",)
    assert deployed.size_bytes == os.path.getsize(deployed.path)
    float_bytes = sum(p.numel() * 4 for p in mlp().parameters())
    # int8 codes, or int4 values stored one per byte: about a quarter of float32.
    assert deployed.size_bytes < 0.3 * float_bytes
    state_dict = torch.load(deployed.path, weights_only=True)
    assert state_dict.keys() == mlp().state_dict().keys()
    loaded = load_torchao(mlp(), spec, deployed.path)
    with torch.inference_mode():
        assert torch.equal(loaded(batch), deployed.predict(batch))
    assert deployed.saved_as.startswith(f"torch.save of the torchao {spec.describe()} state_dict ")


def test_the_users_model_is_unchanged(tmp_path, model, batch):
    model.train()
    before = state(model)
    deploy_torchao(model, QuantSpec(bits=8, activation_bits=8), PruneSpec(amount=0.5), tmp_path)
    assert same_state(model, before)
    assert model.training


def test_pruning_happens_in_torch_and_its_zeros_survive_quantization(tmp_path, batch):
    spec, config = RECIPES["int8"]
    deployed = deploy_torchao(mlp(), spec, PruneSpec(amount=0.5), tmp_path)
    pruned = prune_model(mlp(), PruneSpec(amount=0.5))
    with torch.inference_mode():
        assert torch.equal(deployed.predict(batch), by_hand(pruned, config())(batch))
    loaded = load_torchao(mlp(), spec, deployed.path)
    for name in ("0", "2", "4"):
        dequantized = loaded.get_submodule(name).weight.dequantize()
        zeros = pruned.get_submodule(name).weight == 0
        assert zeros.float().mean() >= 0.5 and torch.all(dequantized[zeros] == 0)


def test_layers_torchao_leaves_float_are_named(tmp_path):
    images = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    deployed = deploy_torchao(seeded(Net()), QuantSpec(bits=8), None, tmp_path)
    assert deployed.kept_float == ("conv1", "conv2")
    assert deployed.saved_as.endswith(
        "; left float (torchao quantizes Linear layers only): conv1, conv2"
    )
    assert deployed.predict(images).shape == (4, 10)


def test_exclude_leaves_a_layer_float_and_it_is_not_listed(tmp_path, batch):
    deployed = deploy_torchao(mlp(), QuantSpec(bits=8, exclude=("4",)), None, tmp_path)
    loaded = load_torchao(mlp(), QuantSpec(bits=8, exclude=("4",)), deployed.path)
    assert type(loaded.get_submodule("4").weight) is torch.nn.Parameter
    assert type(loaded.get_submodule("2").weight) is not torch.nn.Parameter
    assert deployed.kept_float == ()


def test_a_refused_recipe_or_a_missing_extra_stops_before_any_work(tmp_path, monkeypatch):
    with pytest.raises(SpecError, match="cannot run 'int3'"):
        deploy_torchao(mlp(), QuantSpec(bits=3), None, tmp_path)
    monkeypatch.setattr(registry, "_find_spec", lambda name: None)
    with pytest.raises(CompressError, match=r'pip install "pytest-compress\[torchao\]"'):
        deploy_torchao(mlp(), QuantSpec(bits=8), None, tmp_path)
    assert os.listdir(tmp_path) == []
