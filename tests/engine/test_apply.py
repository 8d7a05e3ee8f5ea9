"""Model-level recipes: what is compressed, what is not, and that the input is never touched."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from pytest_compress.engine.activations import (
    ActivationFakeQuantize,
    ActivationPrune,
    activation_hooks,
)
from pytest_compress.engine.apply import (
    compress_model,
    low_memory_mode,
    prune_model,
    quantize_model,
)
from pytest_compress.engine.measure import evaluate, model_size, sparsity
from pytest_compress.engine.quant import fake_quantize, quantize
from pytest_compress.engine.record import get_record
from pytest_compress.engine.specs import PruneSpec, QuantSpec
from pytest_compress.errors import CalibrationError, DataError, ModelError, SpecError
from pytest_compress.fileformat.container import compressed_size, load_compressed, save_compressed
from tests.models import ConvTransposeModel, Net, TiedEmbeddingModel, mlp, seeded

LENET_INPUT = torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def lenet() -> Net:
    return seeded(Net())


def calibration(n: int = 3) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(2)
    return [torch.randn(4, 3, 32, 32, generator=generator) for _ in range(n)]


# --- the input model is never modified -------------------------------------------------


def snapshot(model: nn.Module) -> dict:
    """Everything about a model an engine function could disturb."""
    return {
        "state": {k: v.detach().clone() for k, v in model.state_dict().items()},
        "training": [m.training for m in model.modules()],
        "requires_grad": [p.requires_grad for p in model.parameters()],
        "hooks": [
            (
                list(m._forward_hooks.values()),
                list(m._forward_pre_hooks.values()),
                list(m._backward_hooks.values()),
            )
            for m in model.modules()
        ],
        "record": model.__dict__.get("_pytest_compress_record"),
    }


def assert_unchanged(model: nn.Module, before: dict) -> None:
    after = snapshot(model)
    assert after["state"].keys() == before["state"].keys()
    for key, value in before["state"].items():
        assert torch.equal(after["state"][key], value), f"{key} changed"
    assert after["training"] == before["training"]
    assert after["requires_grad"] == before["requires_grad"]
    assert after["hooks"] == before["hooks"]
    assert after["record"] is before["record"]


RECIPES = [
    lambda m: quantize_model(m, "int4"),
    lambda m: quantize_model(m, QuantSpec(bits=8, parameters="all", per_channel=False)),
    lambda m: quantize_model(m, "w8a8", calibration_data=calibration()),
    lambda m: prune_model(m, 0.5),
    lambda m: prune_model(m, PruneSpec(amount=0.7, scope="global")),
    lambda m: prune_model(m, PruneSpec(threshold=0.3, activation_threshold=0.2)),
    lambda m: prune_model(m, PruneSpec(amount=0.5, structure="channel", norm="l2")),
    lambda m: prune_model(m, "2:4"),
    lambda m: compress_model(
        m, quantize="w4a8", prune=0.8, calibration_data=[(x, None) for x in calibration()]
    ),
]


@pytest.mark.parametrize("low_memory", [False, True], ids=["deep-copy", "low-memory"])
@pytest.mark.parametrize("recipe", RECIPES)
def test_the_input_model_is_never_modified(recipe, low_memory) -> None:
    model = lenet().train()
    model.fc2.eval()  # a mixed train/eval state must survive too
    model.conv1.weight.requires_grad_(False)
    handle_calls = []
    model.fc1.register_forward_hook(lambda *args: handle_calls.append(1))
    before = snapshot(model)
    with low_memory_mode(low_memory):
        compressed = recipe(model)
    assert compressed is not model
    compressed.eval()
    compressed(LENET_INPUT)
    assert_unchanged(model, before)


# --- quantization ----------------------------------------------------------------------


def test_weights_are_fake_quantized_per_output_channel_and_biases_stay_float() -> None:
    model = lenet()
    compressed = quantize_model(model, "int4")
    for name in ("conv1", "conv2", "fc1", "fc2", "fc3"):
        original, quantized = getattr(model, name), getattr(compressed, name)
        expected = fake_quantize(original.weight.detach(), bits=4, axis=0)
        assert torch.equal(quantized.weight, expected)
        assert torch.equal(quantized.bias, original.bias)
        assert quantized.weight.unique(dim=None).numel() <= 16 * original.weight.shape[0]
    record = get_record(compressed)
    assert sorted(record.quantized) == [
        f"{n}.weight" for n in ("conv1", "conv2", "fc1", "fc2", "fc3")
    ]
    assert all(p.bits == 4 and p.axis == 0 for p in record.quantized.values())


def test_conv_transpose_is_quantized_along_its_output_axis() -> None:
    model = seeded(ConvTransposeModel())
    compressed = quantize_model(model, "int4")
    expected = fake_quantize(model.up.weight.detach(), bits=4, axis=1)
    assert torch.equal(compressed.up.weight, expected)
    assert get_record(compressed).quantized["up.weight"].axis == 1


def test_all_parameters_quantizes_biases_and_normalisation_layers() -> None:
    model = seeded(mlp())
    compressed = quantize_model(model, QuantSpec(bits=3, parameters="all"))
    names = set(get_record(compressed).quantized)
    assert names == {"0.weight", "0.bias", "2.weight", "2.bias", "3.weight", "3.bias"}
    assert torch.equal(compressed[2].bias, fake_quantize(model[2].bias.detach(), bits=3))
    # Buffers are not parameters: running statistics stay as they are.
    assert torch.equal(compressed[2].running_var, model[2].running_var)


def test_default_leaves_normalisation_layers_float() -> None:
    model = seeded(mlp())
    compressed = quantize_model(model, "int2")
    assert torch.equal(compressed[2].weight, model[2].weight)
    assert set(get_record(compressed).quantized) == {"0.weight", "3.weight"}


def test_include_and_exclude_select_layers_by_name() -> None:
    model = lenet()
    only_fc = quantize_model(model, QuantSpec(bits=4, include=("fc*",), exclude=("fc3",)))
    assert set(get_record(only_fc).quantized) == {"fc1.weight", "fc2.weight"}
    assert torch.equal(only_fc.conv1.weight, model.conv1.weight)
    assert torch.equal(only_fc.fc3.weight, model.fc3.weight)


def test_tied_weights_are_quantized_once_and_stay_tied() -> None:
    model = seeded(TiedEmbeddingModel())
    compressed = quantize_model(model, "int4")
    assert compressed.out.weight is compressed.embed.weight
    assert torch.equal(
        compressed.embed.weight, fake_quantize(model.embed.weight.detach(), bits=4, axis=0)
    )
    record = get_record(compressed).quantized
    assert record["embed.weight"] == record["out.weight"]


def test_symmetric_per_tensor_spec_is_honoured() -> None:
    model = lenet()
    compressed = quantize_model(model, QuantSpec(bits=8, symmetric=True, per_channel=False))
    params = get_record(compressed).quantized["fc1.weight"]
    assert params.axis is None and int(params.zero_point) == 0 and params.qmin == -128
    assert torch.equal(
        compressed.fc1.weight, fake_quantize(model.fc1.weight.detach(), symmetric=True)
    )


@pytest.mark.parametrize("observer", ["minmax", "percentile", "mse"])
def test_activation_quantization_rounds_layer_outputs_onto_a_calibrated_grid(observer) -> None:
    model = lenet()
    data = calibration()
    compressed = quantize_model(
        model, QuantSpec(bits=8, activation_bits=8, observer=observer), data
    )
    hooks = dict(activation_hooks(compressed))
    assert set(hooks) == {"conv1", "conv2", "fc1", "fc2", "fc3"}
    seen = []
    compressed.fc3.register_forward_hook(lambda m, i, out: seen.append(out))
    compressed(LENET_INPUT)
    hook = hooks["fc3"]
    assert isinstance(hook, ActivationFakeQuantize)
    codes = seen[0] / hook.scale + hook.zero_point
    assert torch.allclose(codes, codes.round(), atol=1e-3), "outputs must lie on the grid"
    # Calibration saw the weight-quantized model's outputs; fc3's output is the model's.
    weight_only = quantize_model(model, QuantSpec(bits=8))
    with torch.no_grad():
        outputs = torch.cat([weight_only(x) for x in data])
    grid_low = (hook.qmin - hook.zero_point) * hook.scale
    grid_high = (hook.qmax - hook.zero_point) * hook.scale
    if observer == "minmax":
        assert grid_low <= float(outputs.min()) + hook.scale
        assert grid_high >= float(outputs.max()) - hook.scale
    else:
        assert grid_high - grid_low <= float(outputs.max() - outputs.min()) + 2 * hook.scale


def test_percentile_observer_clips_an_outlier_that_minmax_keeps() -> None:
    layer = nn.Linear(4, 4)
    with torch.no_grad():
        layer.weight.copy_(torch.eye(4))
        layer.bias.zero_()
    values = torch.linspace(-1, 1, 4000).reshape(1000, 4)
    values[0, 0] = 100.0
    minmax = quantize_model(layer, "w8a8", [values])
    percentile = quantize_model(
        layer, QuantSpec(activation_bits=8, observer="percentile", percentile=99.9), [values]
    )
    ((_, minmax_hook),) = activation_hooks(minmax)
    ((_, percentile_hook),) = activation_hooks(percentile)
    assert minmax_hook.scale > 0.3  # 101 / 255: the outlier stretches the grid
    assert percentile_hook.scale < 0.01  # about 2 / 255


def test_mse_observer_beats_minmax_on_heavy_tails() -> None:
    layer = nn.Linear(1, 1)
    with torch.no_grad():
        layer.weight.fill_(1.0)
        layer.bias.zero_()
    generator = torch.Generator().manual_seed(3)
    values = torch.randn(20000, 1, generator=generator) ** 3
    errors = {}
    for observer in ("minmax", "mse"):
        compressed = quantize_model(
            layer, QuantSpec(bits=8, activation_bits=4, observer=observer), [values]
        )
        with torch.no_grad():
            errors[observer] = float(((compressed(values) - layer(values)) ** 2).mean())
    assert errors["mse"] < errors["minmax"]


# --- pruning ---------------------------------------------------------------------------


def test_prune_bakes_zeros_into_plain_parameters() -> None:
    model = lenet()
    pruned = prune_model(model, PruneSpec(amount=0.6, scope="global"))
    assert list(pruned.state_dict()) == list(model.state_dict())
    assert all(not hasattr(m, "weight_orig") and not m._forward_pre_hooks for m in pruned.modules())
    assert all(isinstance(p, nn.Parameter) for p in pruned.parameters())
    weights = [getattr(pruned, n).weight for n in ("conv1", "conv2", "fc1", "fc2", "fc3")]
    zeros = sum(int((w == 0).sum()) for w in weights)
    total = sum(w.numel() for w in weights)
    assert zeros == round(0.6 * total)
    assert all(torch.equal(w[w == 0].abs(), torch.zeros_like(w[w == 0])) for w in weights)
    clone = copy.deepcopy(pruned)
    assert torch.equal(clone.fc1.weight, pruned.fc1.weight)


def test_layer_amount_prunes_each_layer_by_the_same_fraction() -> None:
    pruned = prune_model(lenet(), 0.5)
    for name in ("conv1", "conv2", "fc1", "fc2", "fc3"):
        weight = getattr(pruned, name).weight
        assert int((weight == 0).sum()) == round(0.5 * weight.numel())


def test_threshold_rule_is_per_layer() -> None:
    model = lenet()
    pruned = prune_model(model, PruneSpec(threshold=0.25))
    for name in ("conv1", "fc1"):
        original = getattr(model, name).weight.detach()
        kept = getattr(pruned, name).weight != 0
        assert torch.equal(kept, original.abs() >= 0.25 * original.abs().max())


def test_channel_pruning_removes_whole_output_channels() -> None:
    pruned = prune_model(lenet(), PruneSpec(amount=0.5, structure="channel"))
    rows_zero = (pruned.fc1.weight == 0).all(dim=1)
    assert int(rows_zero.sum()) == 60
    assert int((pruned.fc1.weight[~rows_zero] == 0).sum()) == 0


def test_two_four_pruning_on_a_model() -> None:
    pruned = prune_model(lenet(), "2:4")
    groups = pruned.fc1.weight.reshape(120, -1, 4)
    assert torch.equal((groups != 0).sum(dim=-1), torch.full((120, 100), 2))


def test_activation_pruning_zeroes_small_outputs_at_run_time() -> None:
    model = lenet()
    pruned = prune_model(model, PruneSpec(activation_threshold=0.5, include=("fc1",)))
    hooks = list(activation_hooks(pruned))
    assert [(name, type(hook)) for name, hook in hooks] == [("fc1", ActivationPrune)]
    outputs = []
    pruned.fc1.register_forward_hook(lambda m, i, out: outputs.append(out))
    reference = []
    model.fc1.register_forward_hook(lambda m, i, out: reference.append(out))
    with torch.no_grad():
        pruned(LENET_INPUT)
        model(LENET_INPUT)
    dense = reference[0]
    expected = torch.where(dense.abs() < 0.5 * dense.abs().max(), 0.0, dense)
    assert torch.equal(outputs[0], expected)


def test_pruning_twice_with_the_same_spec_changes_nothing() -> None:
    for spec in (
        PruneSpec(amount=0.5),
        PruneSpec(amount=0.5, scope="global"),
        PruneSpec(threshold=0.2),
    ):
        once = prune_model(lenet(), spec)
        twice = prune_model(once, spec)
        for key, value in once.state_dict().items():
            assert torch.equal(twice.state_dict()[key], value), (spec, key)


# --- compress_model --------------------------------------------------------------------


@pytest.mark.parametrize(
    "quantize_spec",
    ["int8", "int2", QuantSpec(bits=4, symmetric=True), QuantSpec(bits=4, per_channel=False)],
)
def test_pruned_zeros_stay_exactly_zero_after_quantization(quantize_spec) -> None:
    model = lenet()
    pruned = prune_model(model, PruneSpec(amount=0.8, scope="global"))
    compressed = compress_model(
        model, prune=PruneSpec(amount=0.8, scope="global"), quantize=quantize_spec
    )
    for name in ("conv1", "conv2", "fc1", "fc2", "fc3"):
        zero = getattr(pruned, name).weight == 0
        assert torch.all(getattr(compressed, name).weight[zero] == 0)


def test_compress_prunes_then_quantizes() -> None:
    model = lenet()
    compressed = compress_model(model, quantize="int4", prune=0.5)
    expected = fake_quantize(prune_model(model, 0.5).fc1.weight.detach(), bits=4, axis=0)
    assert torch.equal(compressed.fc1.weight, expected)


def test_quantized_values_are_reproduced_by_their_recorded_mapping() -> None:
    compressed = compress_model(lenet(), quantize="int4", prune=0.5)
    for name, params in get_record(compressed).quantized.items():
        value = compressed.state_dict()[name]
        q = params.codes_of(value, name)
        assert int(q.codes.min()) >= params.qmin and int(q.codes.max()) <= params.qmax


# --- bad input -------------------------------------------------------------------------


@pytest.mark.parametrize("bits", [0, 1, 17])
def test_bad_bits_name_the_argument_and_range(bits) -> None:
    with pytest.raises(ValueError, match=r"bits must be an integer from 2 to 16"):
        QuantSpec(bits=bits)


@pytest.mark.parametrize("amount", [0.0, -0.1, 1.0, 1.5, math.nan])
def test_bad_amount(amount) -> None:
    with pytest.raises(ValueError, match=r"amount"):
        PruneSpec(amount=amount)


@pytest.mark.parametrize("argument", ["threshold", "activation_threshold"])
def test_negative_alpha_or_beta(argument) -> None:
    with pytest.raises(ValueError, match=r"must be in \[0, 1\]"):
        PruneSpec(**{argument: -0.1})


def test_nan_weights_name_the_parameter_and_count() -> None:
    model = lenet()
    with torch.no_grad():
        model.fc2.weight[0, :3] = float("nan")
        model.fc2.weight[1, 0] = float("inf")
    with pytest.raises(ModelError, match=r"fc2\.weight has 4 NaN or infinite values"):
        quantize_model(model, "int8")


def test_model_without_compressible_layers() -> None:
    model = nn.Sequential(nn.ReLU(), nn.BatchNorm1d(3))
    for call in (lambda: quantize_model(model, "int8"), lambda: prune_model(model, 0.5)):
        with pytest.raises(ModelError, match=r"no compressible layer.*Linear, Conv1d"):
            call()


def test_include_that_matches_nothing_says_so() -> None:
    with pytest.raises(
        ModelError, match=r"no compressible layer matching include=\['decoder\.\*'\]"
    ):
        quantize_model(lenet(), QuantSpec(include=("decoder.*",)))


@pytest.mark.parametrize("shorthand", ["int1", "int17", "fp4", "int4-g0", "w8a1", "INT 8", ""])
def test_unknown_quantize_shorthand_lists_valid_forms(shorthand) -> None:
    with pytest.raises(ValueError, match=r'"int2".."int16".*"w8a8"'):
        quantize_model(lenet(), shorthand)


@pytest.mark.parametrize("shorthand", [1.5, 0.0, "half", "4:2", 1])
def test_unknown_prune_shorthand_lists_valid_forms(shorthand) -> None:
    with pytest.raises(ValueError, match=r"prune|PruneSpec"):
        prune_model(lenet(), shorthand)


def test_activation_quantization_without_data() -> None:
    with pytest.raises(DataError, match=r"needs calibration_data"):
        quantize_model(lenet(), "w8a8")
    with pytest.raises(DataError, match=r"needs calibration_data"):
        compress_model(lenet(), quantize="w4a8", prune=0.5)


def test_empty_calibration_iterable() -> None:
    with pytest.raises(DataError, match=r"calibration_data yielded no batches"):
        quantize_model(lenet(), "w8a8", calibration_data=[])


def test_compress_without_any_recipe() -> None:
    with pytest.raises(SpecError, match=r"quantize=.*prune="):
        compress_model(lenet())


def test_not_a_module() -> None:
    with pytest.raises(ModelError, match=r"must be a torch.nn.Module"):
        quantize_model({"weight": torch.ones(2)}, "int8")


def test_quantize_reports_tensor_name_for_plain_tensors() -> None:
    with pytest.raises(ModelError, match=r"my\.tensor has 1 NaN"):
        quantize(torch.tensor([1.0, float("nan")]), name="my.tensor")


def test_measuring_and_saving_never_modify_the_model(tmp_path) -> None:
    model = lenet().train()
    model.fc2.eval()
    compressed = compress_model(model, quantize="w8a8", prune=0.5, calibration_data=calibration())
    batches = [(LENET_INPUT, torch.zeros(8, dtype=torch.long))]
    for subject in (model, compressed):
        before = snapshot(subject)
        evaluate(subject, batches)
        model_size(subject)
        compressed_size(subject)
        sparsity(subject)
        save_compressed(subject, tmp_path / "model.ptc")
        load_compressed(tmp_path / "model.ptc", subject)
        assert_unchanged(subject, before)


def test_nan_weights_are_named_when_pruning_too() -> None:
    model = lenet()
    with torch.no_grad():
        model.conv2.weight[0, 0, 0, 0] = float("nan")
    for spec in (PruneSpec(amount=0.5, scope="global"), PruneSpec(threshold=0.1), "2:4"):
        with pytest.raises(ModelError, match=r"conv2\.weight has 1 NaN or infinite value "):
            prune_model(model, spec)


class SkipsALayer(nn.Module):
    """A model whose forward never runs ``unused``."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Linear(4, 4)
        self.unused = nn.Linear(4, 4)
        self.head = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.body(x)))


def test_a_layer_the_calibration_data_never_runs_is_an_error_not_a_silent_float() -> None:
    model, data = seeded(SkipsALayer()), [torch.randn(3, 4)]
    with pytest.raises(
        CalibrationError,
        match=r"layer 'unused' never ran on the calibration data\. Pass calibration_data that "
        r"runs them, or leave them out with QuantSpec\(exclude=\['unused'\]\)",
    ):
        quantize_model(model, "w8a8", data)
    with pytest.raises(CalibrationError, match=r"exclude=\['head\*', 'unused'\]"):
        compress_model(
            model, quantize=QuantSpec(activation_bits=8, exclude=("head*",)), calibration_data=data
        )
    compressed = quantize_model(model, QuantSpec(activation_bits=8, exclude=("unused",)), data)
    assert [name for name, _ in activation_hooks(compressed)] == ["body", "head"]


def test_a_layer_that_ran_without_output_values_is_named_too() -> None:
    model = seeded(nn.Sequential(nn.Embedding(5, 3), nn.Linear(3, 2)))
    empty = torch.zeros(0, dtype=torch.long)
    with pytest.raises(CalibrationError, match=r"layers '0', '1' produced no floating-point"):
        quantize_model(model, "w8a8", [empty])
