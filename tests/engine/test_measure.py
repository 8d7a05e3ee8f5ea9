"""Measurement: metric over data, size in bytes, sparsity."""

from __future__ import annotations

import io

import pytest
import torch
from torch import nn

from pytest_compress.engine.apply import prune_model
from pytest_compress.engine.measure import (
    count_nonzero,
    evaluate,
    model_metric,
    model_size,
    sparsity,
    top1_accuracy,
)
from pytest_compress.engine.specs import PruneSpec
from pytest_compress.errors import DataError, ModelError
from tests.models import Net, TiedEmbeddingModel, classification_batches, mlp, seeded


def linear_data(n: int = 100) -> tuple[nn.Module, list]:
    model = seeded(nn.Linear(5, 3))
    inputs = torch.randn(n, 5, generator=torch.Generator().manual_seed(4))
    return model, classification_batches(model, inputs, batch_size=32)


def test_top1_accuracy_by_default_counts_every_sample_once() -> None:
    model, batches = linear_data()
    assert evaluate(model, batches) == 1.0
    # Flip the labels of 7 samples spread over batches of unequal size (32, 32, 32, 4).
    flipped = [(x, y.clone()) for x, y in batches]
    for batch, index in [(0, 0), (0, 5), (1, 3), (2, 31), (3, 0), (3, 1), (3, 3)]:
        flipped[batch][1][index] = (flipped[batch][1][index] + 1) % 3
    assert evaluate(model, flipped) == pytest.approx(93 / 100)


def test_a_batch_metric_is_summed_over_batches_and_divided_at_the_end() -> None:
    model, batches = linear_data()

    def mean_target(outputs: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, int]:
        return targets.float().sum(), targets.numel()

    expected = float(torch.cat([y for _, y in batches]).float().mean())
    assert evaluate(model, batches, mean_target) == pytest.approx(expected)


def test_a_model_metric_receives_the_model_in_eval_mode_and_the_data() -> None:
    model, batches = linear_data()
    model.train()
    seen = {}

    def metric(m: nn.Module, data: list) -> float:
        seen["training"] = m.training
        seen["grad"] = torch.is_grad_enabled()
        return float(len(data))

    assert evaluate(model, batches, model_metric(metric)) == 4.0
    assert seen == {"training": False, "grad": False}
    assert model.training


def test_evaluate_restores_every_modules_own_flag() -> None:
    model = seeded(mlp()).train()
    model[2].eval()
    inputs = torch.randn(20, 16, generator=torch.Generator().manual_seed(5))
    evaluate(model, [(inputs, torch.zeros(20, dtype=torch.long))])
    assert [m.training for m in model.modules()] == [True, True, True, False, True]


def test_evaluate_runs_without_gradients() -> None:
    grads = []

    class Probe(nn.Linear):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            grads.append(torch.is_grad_enabled() or not torch.is_inference_mode_enabled())
            return super().forward(x)

    model = Probe(3, 2)
    evaluate(model, [(torch.randn(4, 3), torch.zeros(4, dtype=torch.long))])
    assert grads == [False]


def test_inputs_as_tuples_and_dicts() -> None:
    class TwoInputs(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(2, 2)

        def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
            return self.fc(a + b)

    model = seeded(TwoInputs())
    a, b = torch.randn(6, 2), torch.randn(6, 2)
    targets = model(a, b).argmax(-1)
    assert evaluate(model, [((a, b), targets)]) == 1.0
    assert evaluate(model, [({"a": a, "b": b}, targets)]) == 1.0


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ([], "data yielded no samples"),
        ([torch.randn(3, 5)], r"\(inputs, targets\) pair"),
        ([(torch.randn(3, 5), torch.zeros(3), 1)], r"pair, got a tuple of length 3"),
    ],
)
def test_bad_data_is_explained(data, message) -> None:
    with pytest.raises(DataError, match=message):
        evaluate(seeded(nn.Linear(5, 3)), data)


def test_a_batch_metric_must_return_a_pair() -> None:
    model, batches = linear_data()
    with pytest.raises(ValueError, match=r"must return \(sum, count\).*model_metric"):
        evaluate(model, batches, lambda outputs, targets: 0.5)


def test_top1_needs_class_scores() -> None:
    with pytest.raises(ModelError, match=r"class scores of shape \(batch, classes\)"):
        top1_accuracy(torch.randn(4), torch.zeros(4))


def test_evaluating_on_another_device_copies_instead_of_moving() -> None:
    model, batches = linear_data()
    model = model.double()
    batches = [(x.double(), y) for x, y in batches]
    # "meta" stands in for an accelerator: the model must stay where it is.
    with pytest.raises((NotImplementedError, RuntimeError, ValueError)):
        evaluate(model, batches, device="meta")
    assert model.weight.device.type == "cpu"


def test_model_size_is_the_bytes_of_torch_save() -> None:
    model = seeded(Net())
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    assert model_size(model) == len(buffer.getvalue())
    parameters = sum(p.numel() for p in model.parameters())
    assert parameters * 4 < model_size(model) < parameters * 4 + 10_000


@pytest.mark.parametrize(
    "dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.int8]
)
def test_count_nonzero_is_torchs_count(dtype: torch.dtype) -> None:
    # numpy counts plain CPU floats; negative zero is a zero and NaN is not, as in torch
    values = torch.tensor([0.0, -0.0, float("nan"), 1.0, -2.0, float("inf"), 0.0, 3.0])
    tensor = values.to(dtype) if dtype.is_floating_point else values.nan_to_num(0).to(dtype)
    for view in (tensor, tensor[::2], tensor.reshape(2, 4).t(), nn.Parameter(tensor.float())):
        assert count_nonzero(view) == int(torch.count_nonzero(view))


def test_sparsity_overall_and_per_layer() -> None:
    model = seeded(Net())
    pruned = prune_model(model, PruneSpec(amount=0.5, include=("fc1",)))
    report = sparsity(pruned)
    assert report.per_layer["fc1"] == 0.5
    assert report.per_layer["conv1"] == 0.0
    total = sum(p.numel() for n, p in model.named_parameters() if n.endswith("weight"))
    assert report.overall == pytest.approx(24000 / total)
    assert float(report) == report.overall
    assert sparsity(model).overall == 0.0


def test_sparsity_counts_a_tied_weight_once() -> None:
    model = seeded(TiedEmbeddingModel())
    with torch.no_grad():
        model.embed.weight[:10] = 0.0
    report = sparsity(model)
    assert set(report.per_layer) == {"embed", "hidden"}
    assert report.overall == pytest.approx(120 / (600 + 144))


def test_a_dict_batch_that_does_not_match_the_forward_says_how_it_was_called() -> None:
    class Positional(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(2, 2)

        def forward(self, features: dict) -> torch.Tensor:
            return self.fc(features["x"])

    batches = [({"x": torch.randn(3, 2)}, torch.zeros(3, dtype=torch.long))]
    with pytest.raises(TypeError, match=r"called model\(\*\*inputs\), the batch's dict as keyword"):
        evaluate(Positional(), batches)


def test_top1_reads_logits_of_a_model_output_object() -> None:
    class Output:
        def __init__(self, logits: torch.Tensor) -> None:
            self.logits = logits

    logits = torch.tensor([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7]])
    correct, count = top1_accuracy(Output(logits), torch.tensor([1, 0, 0]))
    assert (int(correct), count) == (2, 3)


def test_top1_refuses_targets_that_would_broadcast() -> None:
    one_hot = torch.eye(3)
    with pytest.raises(DataError, match=r"targets of shape \(3,\).*got \(3, 3\)"):
        top1_accuracy(torch.randn(3, 3), one_hot)


@pytest.mark.parametrize(
    "recipe",
    [
        {"prune": 0.6},
        {"quantize": "int4", "prune": PruneSpec(amount=0.8, scope="global")},
        {"quantize": "fp8", "prune": 0.3},
        {"quantize": "int8"},
    ],
)
def test_inside_grid_memo_the_sparsity_reads_the_counts_the_file_size_took(
    monkeypatch, recipe
) -> None:
    from types import SimpleNamespace

    from pytest_compress.engine import measure
    from pytest_compress.engine.apply import compress_model
    from pytest_compress.engine.record import grid_memo
    from pytest_compress.fileformat.container import compressed_size

    model = compress_model(seeded(mlp()), **recipe)
    counted = sparsity(model)  # no memo: counted afresh
    with grid_memo():
        compressed_size(model)
        with monkeypatch.context() as patch:  # a count now would fail the test
            patch.setattr(measure, "np", SimpleNamespace(count_nonzero=None))
            patch.setattr(measure.torch, "count_nonzero", None)
            assert sparsity(model) == counted
        with torch.no_grad():  # a changed weight is counted again
            model[0].weight.zero_()
        assert sparsity(model).per_layer["0"] == 1.0
