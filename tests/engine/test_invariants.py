"""The recipe-invariant gate: every recipe the engine makes holds its claims, and a model
that does not is named with its layer and numbers."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

from pytest_compress.engine import record
from pytest_compress.engine.apply import compress_model
from pytest_compress.engine.invariants import verify_recipe
from pytest_compress.engine.record import grid_memo
from pytest_compress.engine.specs import PruneSpec, QuantSpec, as_prune_spec, as_quant_spec
from pytest_compress.fileformat.container import compressed_size


def model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3), nn.Flatten(), nn.Linear(8 * 6 * 6, 64), nn.ReLU(), nn.Linear(64, 10)
    ).eval()


CALIBRATION = [torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(1))]
RECIPES = [
    ("int8", None), ("int4", None), ("int2", None), ("int4-g32", None), ("int3-gptq", None),
    ("int4-mse", None), ("fp16", None), ("bf16", None), ("fp8", None), ("fp8-e5m2", None),
    ("w8a8", None), (QuantSpec(bits=8, per_channel=False), None),
    (QuantSpec(bits=4, symmetric=True, exclude=("4",)), None),
    (None, 0.5), (None, PruneSpec(amount=0.8, scope="global")), (None, "2:4"),
    (None, PruneSpec(threshold=0.3)), (None, PruneSpec(amount=0.5, structure="channel")),
    ("int4", PruneSpec(amount=0.8, scope="global")), ("int8", PruneSpec(threshold=0.3)),
    ("int4-g32-mse", "2:4"), ("bf16", 0.5),
]  # fmt: skip


def specs(quantize, prune):
    quant = as_quant_spec(quantize)
    if quant is not None and quant.group_size:
        quant = dataclasses.replace(quant, allow_short_rows=True)
    return quant, as_prune_spec(prune) if prune is not None else None


@pytest.mark.parametrize(("quantize", "prune"), RECIPES, ids=str)
def test_every_recipe_the_engine_makes_holds_its_claims(quantize, prune) -> None:
    float_model = model()
    quant, prune_spec = specs(quantize, prune)
    compressed = compress_model(
        float_model, quantize=quant, prune=prune_spec, calibration_data=CALIBRATION
    )
    assert verify_recipe(float_model, compressed, quant, prune_spec) == []


def described(float_model, compressed, quantize=None, prune=None) -> list[str]:
    quant, prune_spec = specs(quantize, prune)
    return [v.describe() for v in verify_recipe(float_model, compressed, quant, prune_spec)]


def test_int8_weights_claimed_as_int4_are_named_by_layer_and_count() -> None:
    float_model = model()
    found = described(float_model, compress_model(float_model, quantize="int8"), "int4")
    assert len(found) == 3
    assert found[1].startswith("2: channel ") and "distinct values; 4 bits allow 16" in found[1]
    # the count: the worst channel of layer 2 at int8, counted here by hand
    rows = compress_model(float_model, quantize="int8")[2].weight.detach()
    most = max(len(torch.unique(row)) for row in rows)
    assert f"holds {most} distinct values" in found[1]


def test_a_float_model_claimed_as_bf16_is_refused() -> None:
    float_model = model()
    found = described(float_model, float_model, "bf16")
    assert found[0].startswith("0: ") and "values are not representable in bf16" in found[0]


def test_weights_moved_off_the_recorded_grid_are_found() -> None:
    float_model = model()
    compressed = compress_model(float_model, quantize="int8")
    with torch.no_grad():
        compressed[2].weight[0, 0] += 1e-4
    assert described(float_model, compressed, "int8") == [
        "2: values off the recorded 8-bit grid (int8 per-channel)"
    ]


def test_the_file_size_and_the_gate_check_each_weight_on_its_grid_once(monkeypatch) -> None:
    # inside grid_memo (one check of the runner), the gate reuses the size's finding
    float_model = model()
    compressed = compress_model(float_model, quantize="int4")
    checks = []
    monkeypatch.setattr(record, "quantize_checked", checked_grids(record.quantize_checked, checks))
    with grid_memo():
        compressed_size(compressed)
        assert len(checks) == 3  # the conv and the two linear weights
        assert verify_recipe(float_model, compressed, as_quant_spec("int4"), None) == []
        assert len(checks) == 3
    verify_recipe(float_model, compressed, as_quant_spec("int4"), None)
    assert len(checks) == 6  # outside it, every weight is checked again


def test_a_weight_changed_after_the_size_is_checked_again() -> None:
    float_model = model()
    compressed = compress_model(float_model, quantize="int8")
    with grid_memo():
        compressed_size(compressed)
        with torch.no_grad():
            compressed[2].weight[0, 0] += 1e-4  # a new version of the same memory
        assert described(float_model, compressed, "int8") == [
            "2: values off the recorded 8-bit grid (int8 per-channel)"
        ]


def checked_grids(function, calls: list):
    """``quantize_checked`` counting the calls that check the grid (``check=True``)."""

    def wrapper(*args, **kwargs):
        if kwargs.get("check", True):
            calls.append(args)
        return function(*args, **kwargs)

    return wrapper


def counted(function, calls: list):
    def wrapper(*args, **kwargs):
        calls.append(args)
        return function(*args, **kwargs)

    return wrapper


def test_pruning_claims_are_counted_against_the_float_model() -> None:
    float_model = model()
    lighter = compress_model(float_model, prune=0.3)
    found = described(float_model, lighter, prune=0.6)
    assert found[0] == "0: 65 zeros of 216; 130 claimed (prune 60% (layer, magnitude))"
    assert len(found) == 3
    globally = described(float_model, lighter, prune=PruneSpec(amount=0.6, scope="global"))
    assert globally[-1].startswith("the 3 selected layers: ")
    assert described(float_model, lighter, prune="2:4")[0].endswith(
        "groups of 4 hold more than 2 non-zeros (prune 2:4 (N:M))"
    )
    channels = described(float_model, lighter, prune=PruneSpec(amount=0.5, structure="channel"))
    assert channels[0] == "0: 0 zero channels; 4 claimed (prune 50% (layer, channel l1))"


def test_threshold_pruning_is_held_both_ways() -> None:
    float_model = model()
    too_little = compress_model(float_model, prune=PruneSpec(threshold=0.1))
    found = described(float_model, too_little, prune=PruneSpec(threshold=0.3))
    assert "weights below 0.3 * max|w| were kept" in found[0]
    too_much = compress_model(float_model, prune=PruneSpec(threshold=0.5))
    found = described(float_model, too_much, prune=PruneSpec(threshold=0.3))
    assert "weights at or above 0.3 * max|w| were pruned" in found[0]
    # quantized, a kept small weight may round to zero: only the first half is held
    pruned_more_then_int8 = compress_model(
        float_model, quantize="int8", prune=PruneSpec(threshold=0.5)
    )
    assert described(float_model, pruned_more_then_int8, "int8", PruneSpec(threshold=0.3)) == []
