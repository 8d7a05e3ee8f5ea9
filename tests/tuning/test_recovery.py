"""Recovery: fine-tune the compressed copy, keep pruned weights at zero, end on the grid."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from pytest_compress.engine.activations import (
    ActivationFakeQuantize,
    ActivationPrune,
    activation_hooks,
)
from pytest_compress.engine.apply import compress_model
from pytest_compress.engine.measure import evaluate
from pytest_compress.engine.specs import PruneSpec, QuantSpec
from pytest_compress.fileformat.container import load_compressed, save_compressed
from pytest_compress.tuning.recovery import (
    finetune,
    pruning_masks,
    recover_compressed,
    zero_masks,
)
from tests.models import labelled_data, small_model

GLOBAL_90 = PruneSpec(amount=0.9, scope="global")


@pytest.fixture(scope="module")
def setup():
    model = small_model()
    return model, labelled_data(model), labelled_data(model, n=1024, seed=5)


def state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {key: value.clone() for key, value in model.state_dict().items()}


def assert_round_trip(model: nn.Module, path, fresh: nn.Module, inputs: torch.Tensor) -> None:
    """``save_compressed`` accepts the model (every quantized weight on its grid) and
    ``load_compressed`` gives the same outputs."""
    save_compressed(model, path)
    restored = load_compressed(path, fresh)
    with torch.no_grad():
        assert torch.equal(model.eval()(inputs), restored.eval()(inputs))


@pytest.mark.parametrize("quantize", ["int8", "int4"])
def test_recovery_keeps_pruned_weights_zero_and_ends_on_the_grid(setup, tmp_path, quantize):
    model, data, train = setup
    compressed = compress_model(model, quantize=quantize, prune=GLOBAL_90)
    untouched = state(compressed)
    masks = pruning_masks(model, GLOBAL_90)
    result = recover_compressed(
        compressed,
        finetune(epochs=5, lr=1e-2),
        train,
        quantize=quantize,
        prune=GLOBAL_90,
        masks=masks,
        evaluate=lambda m: evaluate(m, data),
    )
    recovered = result.model
    for name, mask in masks.items():
        assert torch.count_nonzero(recovered.get_parameter(name)[mask]) == 0, name
    assert result.pruned_weights == sum(int(mask.sum()) for mask in masks.values())
    assert result.unzeroed == {}  # finetune never moves a zero
    assert result.requantized
    assert result.metric_after > result.metric_before + 0.1  # 90 % pruning is a big hit
    assert result.gain == result.metric_after - result.metric_before
    assert_round_trip(recovered, tmp_path / "r.ptc", small_model(), data[0][0])
    for key, value in compressed.state_dict().items():  # the input copy is not modified
        assert torch.equal(value, untouched[key])


def spoil(model: nn.Module, data: object) -> nn.Module:
    """A bad recovery: every weight moves, pruned ones included."""
    with torch.no_grad():
        for param in model.parameters():
            param.add_(0.01)
    return model


def test_a_recovery_that_unzeroes_weights_is_caught_and_rezeroed(setup, tmp_path) -> None:
    model, data, train = setup
    compressed = compress_model(model, quantize="int8", prune=GLOBAL_90)
    masks = zero_masks(compressed, GLOBAL_90)
    result = recover_compressed(compressed, spoil, train, quantize="int8", prune=GLOBAL_90)
    assert result.unzeroed == {name: int(mask.sum()) for name, mask in masks.items()}
    for name, mask in masks.items():
        assert torch.count_nonzero(result.model.get_parameter(name)[mask]) == 0
    total = sum(result.unzeroed.values())
    assert f"{total:,} pruned weights moved off zero by the recovery were re-zeroed" in (
        result.summary()
    )
    assert json.loads(json.dumps(result.to_dict()))["unzeroed"] == result.unzeroed
    assert_round_trip(result.model, tmp_path / "s.ptc", small_model(), data[0][0])


def test_a_recovery_that_unzeroes_weights_can_be_an_error(setup) -> None:
    model, _, train = setup
    compressed = compress_model(model, prune=GLOBAL_90)
    with pytest.raises(ValueError, match=r"recovery_fn moved [\d,]+ pruned weights off zero"):
        recover_compressed(compressed, spoil, train, prune=GLOBAL_90, on_unzeroed="raise")


def test_prune_only_recovery_does_not_quantize(setup) -> None:
    model, _, train = setup
    compressed = compress_model(model, prune=PruneSpec(amount=0.5))
    result = recover_compressed(compressed, finetune(1), train, prune=PruneSpec(amount=0.5))
    assert not result.requantized
    for name, mask in zero_masks(compressed, PruneSpec(amount=0.5)).items():
        assert torch.count_nonzero(result.model.get_parameter(name)[mask]) == 0


def test_activation_quantization_is_lifted_for_recovery_and_recalibrated(setup, tmp_path):
    model, data, train = setup
    recipe = {"quantize": "w8a8", "prune": PruneSpec(amount=0.5, activation_threshold=0.05)}
    compressed = compress_model(model, **recipe, calibration_data=data)
    seen = []

    def recovery(m: nn.Module, batches: object) -> nn.Module:
        seen.extend(type(hook).__name__ for _, hook in activation_hooks(m))
        return finetune(1)(m, batches)

    result = recover_compressed(compressed, recovery, train, **recipe, calibration_data=data)
    assert seen == ["ActivationPrune"] * 3  # rounding hooks off, pruning hooks kept
    kinds = [type(hook) for _, hook in activation_hooks(result.model)]
    assert kinds == [ActivationPrune, ActivationFakeQuantize] * 3
    assert_round_trip(result.model, tmp_path / "a.ptc", small_model(), data[0][0])


def test_caller_measured_metrics_have_a_place(setup) -> None:
    model, _, train = setup
    compressed = compress_model(model, quantize="int8")
    result = recover_compressed(compressed, finetune(1), train, quantize="int8")
    assert result.metric_before is None and result.summary() == "recovery: applied"
    measured = result.with_metrics(0.5, 0.9)
    assert measured.summary() == "recovery: accuracy 50.0% -> 90.0% (+40.0 pp)"
    assert measured.to_dict()["metric_before"] == 0.5


def test_a_quantized_model_needs_its_quantize_spec(setup) -> None:
    model, _, train = setup
    compressed = compress_model(model, quantize="int8")
    with pytest.raises(ValueError, match="quantize must be given"):
        recover_compressed(compressed, finetune(1), train)


@pytest.mark.parametrize(
    ("recovery_fn", "message"),
    [
        (lambda m, d: None, "must return the recovered model"),
        (lambda m, d: nn.Linear(2, 2), "parameters and shapes"),
        ("finetune", "recovery_fn must be a callable"),
    ],
)
def test_a_bad_recovery_fn_is_refused(setup, recovery_fn, message) -> None:
    model, _, train = setup
    compressed = compress_model(model, prune=0.5)
    with pytest.raises(ValueError, match=message):
        recover_compressed(compressed, recovery_fn, train, prune=0.5)


def test_bad_masks_and_options_name_the_argument(setup) -> None:
    model, _, train = setup
    compressed = compress_model(model, prune=0.5)
    good = zero_masks(compressed, PruneSpec(amount=0.5))
    name = next(iter(good))
    cases = [
        ({"masks": {"nope.weight": good[name]}}, "not a parameter"),
        ({"masks": {name: good[name].float()}}, "must be a bool tensor"),
        ({"masks": {name: good[name][:1]}}, "has shape"),
        ({"on_unzeroed": "ignore"}, "on_unzeroed must be one of"),
        ({"evaluate": 3}, "evaluate must be a callable"),
    ]
    for kwargs, message in cases:
        with pytest.raises(ValueError, match=message):
            recover_compressed(compressed, finetune(1), train, prune=0.5, **kwargs)


def test_pruning_masks_are_the_zeros_the_prune_leaves() -> None:
    model = small_model()
    masks = pruning_masks(model, PruneSpec(amount=0.5))
    assert sorted(masks) == ["0.weight", "2.weight", "4.weight"]
    assert all(math.isclose(float(mask.float().mean()), 0.5) for mask in masks.values())
    assert pruning_masks(model, PruneSpec(activation_threshold=0.1)) == {}


# --- finetune ----------------------------------------------------------------------------


def test_finetune_is_deterministic_and_leaves_the_global_rng_alone(setup) -> None:
    model, _, train = setup
    dropout = nn.Sequential(small_model(), nn.Dropout(0.2))
    rng = torch.random.get_rng_state()
    first = finetune(2, 1e-2, seed=3)(compress_model(dropout, prune=0.5), train)
    second = finetune(2, 1e-2, seed=3)(compress_model(dropout, prune=0.5), train)
    assert torch.equal(torch.random.get_rng_state(), rng)
    for key, value in first.state_dict().items():
        assert torch.equal(value, second.state_dict()[key]), key


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_finetune_trains_without_moving_zeros_and_restores_modes(setup, optimizer) -> None:
    model, data, train = setup
    pruned = compress_model(model, prune=GLOBAL_90).eval()
    zeros = {n: p.detach() == 0 for n, p in pruned.named_parameters() if n.endswith("weight")}
    before = evaluate(pruned, data)
    tuned = finetune(5, 1e-2, optimizer=optimizer, weight_decay=1e-4)(pruned, train)
    assert tuned is pruned and not any(m.training for m in tuned.modules())
    for name, mask in zeros.items():
        assert torch.count_nonzero(tuned.get_parameter(name)[mask]) == 0
    assert evaluate(tuned, data) > before


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"epochs": 0}, "epochs must be an int >= 1"),
        ({"epochs": 1.5}, "epochs must be an int >= 1"),
        ({"lr": 0}, "lr must be a finite number > 0"),
        ({"lr": math.nan}, "lr must be a finite number > 0"),
        ({"momentum": -0.1}, "momentum must be a finite number >= 0"),
        ({"optimizer": "rmsprop"}, "optimizer must be one of"),
        ({"seed": "0"}, "seed must be an int"),
    ],
)
def test_finetune_validates_its_arguments(kwargs, message) -> None:
    with pytest.raises(ValueError, match=message):
        finetune(**kwargs)


def test_finetune_refuses_empty_data() -> None:
    with pytest.raises(ValueError, match="no batches"):
        finetune(1)(small_model(), [])


def test_quant_spec_object_recovery_matches_the_recipe(setup, tmp_path) -> None:
    model, data, train = setup
    spec = QuantSpec(bits=4, symmetric=True, per_channel=False)
    compressed = compress_model(model, quantize=spec)
    result = recover_compressed(compressed, finetune(2, 1e-3), train, quantize=spec)
    assert_round_trip(result.model, tmp_path / "q.ptc", small_model(), data[0][0])
    weight = result.model.get_parameter("0.weight")
    assert torch.unique(weight).numel() <= 16  # 4 bits, one tensor-wide grid
