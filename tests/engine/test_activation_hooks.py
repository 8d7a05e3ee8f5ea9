"""The engine's activation hooks: recorded with their handles, removed through them, and
still removable on a deep copy or a pickled copy of the model."""

from __future__ import annotations

import copy
import io

import pytest
import torch
from torch import nn

from pytest_compress.engine.activations import (
    ActivationFakeQuantize,
    ActivationPrune,
    activation_hooks,
    add_activation_hook,
    remove_activation_hooks,
)
from pytest_compress.engine.apply import compress_model
from pytest_compress.engine.specs import PruneSpec
from pytest_compress.fileformat.container import load_compressed, save_compressed
from tests.models import mlp, seeded

INPUT = torch.randn(8, 16, generator=torch.Generator().manual_seed(5))


def compressed() -> nn.Module:
    model = seeded(mlp())
    return compress_model(
        model,
        quantize="w8a8",
        prune=PruneSpec(threshold=0.1, activation_threshold=0.05),
        calibration_data=[INPUT],
    )


def registered(model: nn.Module) -> list[int]:
    """How many forward hooks (and per-hook flags) torch holds, per module."""
    return [
        len(m._forward_hooks)
        + len(m._forward_hooks_with_kwargs)
        + len(m._forward_hooks_always_called)
        for m in model.modules()
    ]


def kinds(model: nn.Module) -> list[tuple[str, str]]:
    return [(name, type(hook).__name__) for name, hook in activation_hooks(model)]


def test_removing_takes_the_hooks_off_through_their_handles() -> None:
    model = compressed()
    assert kinds(model) == [
        ("0", "ActivationPrune"),
        ("0", "ActivationFakeQuantize"),
        ("3", "ActivationPrune"),
        ("3", "ActivationFakeQuantize"),
    ]
    remove_activation_hooks(model, (ActivationFakeQuantize,))
    assert kinds(model) == [("0", "ActivationPrune"), ("3", "ActivationPrune")]
    assert registered(model) == [0, 1, 0, 0, 1]
    remove_activation_hooks(model)
    assert kinds(model) == [] and sum(registered(model)) == 0
    assert all("_pytest_compress_activation_hooks" not in vars(m) for m in model.modules())


@pytest.mark.parametrize("how", ["deepcopy", "pickle"])
def test_a_copy_s_hooks_are_removed_from_the_copy_only(how: str) -> None:
    model = compressed()
    if how == "deepcopy":
        twin = copy.deepcopy(model)
    else:
        buffer = io.BytesIO()
        torch.save(model, buffer)
        buffer.seek(0)
        twin = torch.load(buffer, weights_only=False)
    with torch.no_grad():
        assert torch.equal(twin(INPUT), model(INPUT))
    remove_activation_hooks(twin)
    assert kinds(twin) == [] and sum(registered(twin)) == 0
    assert len(kinds(model)) == 4 and registered(model) == [0, 2, 0, 0, 2]


def test_loading_replaces_the_hooks_an_architecture_model_brought_along(tmp_path) -> None:
    model = compressed()
    save_compressed(model, tmp_path / "m.ptcz")
    loaded = load_compressed(tmp_path / "m.ptcz", model)  # the compressed model as architecture
    assert kinds(loaded) == kinds(model) and registered(loaded) == registered(model)
    with torch.no_grad():
        assert torch.equal(loaded(INPUT), model(INPUT))


def test_a_hook_is_recorded_in_the_order_it_runs_and_vars_hold_only_its_parameters() -> None:
    layer = nn.Linear(2, 2)
    first, second = ActivationPrune(0.5), ActivationFakeQuantize(0.1, 3, 8, 0, 255)
    add_activation_hook(layer, first)
    add_activation_hook(layer, second)
    assert [hook for _, hook in activation_hooks(layer)] == [first, second]
    assert vars(first) == {"beta": 0.5}
    with pytest.raises(TypeError, match="ActivationHook"):
        add_activation_hook(layer, lambda module, inputs, output: output)  # type: ignore[arg-type]


def test_the_fingerprint_of_a_compressed_model_is_stable() -> None:
    from pytest_compress.checks.fingerprint import model_fingerprint

    model = compressed()
    assert model_fingerprint(model) == model_fingerprint(copy.deepcopy(model))
    assert model_fingerprint(model) == model_fingerprint(compressed())
