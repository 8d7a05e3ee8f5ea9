"""Budgets and metrics that cannot mean anything are refused, not passed.

A budget no measurement can break (``min_sparsity=0``, ``max_size_ratio=1e300``, a
relative drop of 100 % for a higher-is-better metric, a drop of 1 on top-1 accuracy),
``higher_is_better=False`` on top-1 accuracy, a negative sample count, a float model that
measures NaN or float targets for top-1 would each let a broken compression pass. The
ones the marker alone decides are usage errors at collection; the ones that need the
resolved metric or the float model's numbers are "could not run the check" errors
before anything is compressed. A compressed model that measures NaN fails its check.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from pytest_compress.budgets import Budgets
from pytest_compress.checks.request import Check, CheckInputs, Recipe
from pytest_compress.checks.runner import CheckRunner
from pytest_compress.engine.measure import evaluate
from pytest_compress.engine.specs import QuantSpec
from pytest_compress.errors import BudgetError, DataError, MetricError, ModelError
from pytest_compress.plugin.markers import MarkerError, parse_marker
from tests.plugin_projects import make_project

VACUOUS_AT_COLLECTION = [
    ({"prune": 0.99, "min_sparsity": 0.0}, "min_sparsity", "sparsity is never below 0"),
    ({"quantize": "int2", "max_relative_drop": 1.0}, "max_relative_drop", "cannot fail"),
    ({"quantize": "int2", "max_relative_drop": 5}, "max_relative_drop", "cannot fail"),
    ({"quantize": "int2", "max_size_ratio": 1e300}, "max_size_ratio", "must be at most 1"),
    ({"quantize": "int2", "max_size_ratio": 1.01}, "max_size_ratio", "must be at most 1"),
]


@pytest.mark.parametrize(("marker", "argument", "words"), VACUOUS_AT_COLLECTION)
def test_a_budget_that_cannot_fail_is_a_marker_error(
    marker: dict[str, object], argument: str, words: str
) -> None:
    with pytest.raises(MarkerError, match=words) as info:
        parse_marker((), marker)
    assert info.value.argument == argument


@pytest.mark.parametrize(
    "marker",
    [
        {"prune": 0.5, "min_sparsity": 0.01},
        {"quantize": "int8", "max_size_ratio": 1.0},
        {"quantize": "int8", "max_relative_drop": 0.99},
        # a loss may rise by more than 100 %: for it a relative limit of 1 can fail
        {"quantize": "int8", "max_relative_drop": 1.0, "higher_is_better": False},
        # whether the metric is top-1 accuracy is known only at run time
        {"quantize": "int8", "max_accuracy_drop": 1.0},
    ],
)
def test_budgets_that_can_fail_are_accepted_at_collection(marker: dict[str, object]) -> None:
    assert parse_marker((), marker).budgets


def test_vacuous_markers_are_one_usage_error_naming_each_test_and_argument(
    pytester: pytest.Pytester,
) -> None:
    make_project(
        pytester,
        """
        import pytest

        @pytest.mark.compress(prune=0.99, min_sparsity=0.0)
        def test_no_floor(): pass

        @pytest.mark.compress(quantize="int2", max_relative_drop=1.0)
        def test_no_relative_limit(): pass

        @pytest.mark.compress(quantize="int2", max_size_ratio=1e300)
        def test_no_size_limit(): pass
        """,
    )
    result = pytester.runpytest()
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        [
            "*test_project.py::test_no_floor: min_sparsity: must be more than 0*",
            "*test_project.py::test_no_relative_limit: max_relative_drop: 1.0 cannot fail*",
            "*test_project.py::test_no_size_limit: max_size_ratio: must be at most 1*",
        ]
    )


# --- at run time, when the metric is known ---------------------------------------------


def mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))


def labelled(model: nn.Module) -> list[tuple[torch.Tensor, torch.Tensor]]:
    x = torch.randn(64, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        return [(x[:32], model(x[:32]).argmax(1)), (x[32:], model(x[32:]).argmax(1))]


def run(check: Check, model: nn.Module, data: object, metric: object = None) -> object:
    runner = CheckRunner(device="cpu", cache_mb=64, sensitivity_limit=4, results=None)
    return runner.run(check, CheckInputs(model, data, "model", "data", metric=metric))


def int2(**budgets: float) -> Check:
    return Check(Recipe(QuantSpec(bits=2)), Budgets(**budgets))


def test_a_drop_of_one_on_top1_accuracy_cannot_fail_and_is_refused() -> None:
    model = mlp()
    with pytest.raises(BudgetError, match=r"max_accuracy_drop: 1.0 cannot fail.*fraction of 1"):
        run(int2(max_accuracy_drop=1.0), model, labelled(model))


def test_a_drop_of_one_on_another_metric_is_a_budget() -> None:
    def loss(outputs: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, int]:
        return nn.functional.cross_entropy(outputs, targets, reduction="sum"), len(targets)

    model = mlp()
    check = Check(Recipe(QuantSpec(bits=2)), Budgets(max_accuracy_drop=1.0), higher_is_better=False)
    assert run(check, model, labelled(model), loss).budgets == check.budgets  # type: ignore[attr-defined]


def test_lower_is_better_top1_accuracy_is_refused_rather_than_read_as_a_gain(
    pytester: pytest.Pytester,
) -> None:
    make_project(
        pytester,
        """
        import pytest

        @pytest.mark.compress(quantize="int2", max_accuracy_drop=0.01, higher_is_better=False)
        def test_int2_as_a_loss(): pass
        """,
    )
    result = pytester.runpytest()
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(
        ["*could not run the check of test_project.py::test_int2_as_a_loss: "
         "higher_is_better=False, but the metric is top-1 accuracy*"]
    )  # fmt: skip


def test_a_negative_count_is_refused_rather_than_turning_a_collapse_into_a_pass() -> None:
    def negative(outputs: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, int]:
        return (outputs.argmax(1) == targets).sum(), -len(targets)

    model = mlp()
    with pytest.raises(MetricError, match=r"count must be a positive number.*batch 0.*-32"):
        evaluate(model, labelled(model), negative)
    with pytest.raises(MetricError, match="count must be a positive number"):
        run(int2(max_accuracy_drop=0.01), model, labelled(model), negative)


def test_a_float_model_with_nan_outputs_is_an_error_before_any_compression(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    model = mlp()
    data = labelled(model)
    with torch.no_grad():
        model[2].bias[1] = math.nan
    compressed = []
    monkeypatch.setattr(
        "pytest_compress.checks.runner.compress_model",
        lambda *args, **kwargs: compressed.append(1),
    )
    with pytest.raises(ModelError, match=r"float model model gives NaN or infinite outputs"):
        run(int2(max_accuracy_drop=0.01), model, data)
    assert not compressed


def test_a_float_metric_that_is_nan_is_an_error_before_any_compression() -> None:
    def nan_metric(outputs: torch.Tensor, targets: torch.Tensor) -> tuple[float, int]:
        return math.nan, len(targets)

    model = mlp()
    with pytest.raises(ModelError, match=r"float model model measures nan_metric nan"):
        run(int2(max_accuracy_drop=0.01), model, labelled(model), nan_metric)


def test_float_targets_are_no_class_indices_for_top1_accuracy() -> None:
    model = mlp()
    data = [(x, torch.rand(len(y))) for x, y in labelled(model)]
    with pytest.raises(DataError, match="integer class indices"):
        run(int2(max_accuracy_drop=0.01), model, data)


def test_a_compressed_metric_of_nan_fails_and_runs_no_sensitivity(
    pytester: pytest.Pytester,
) -> None:
    make_project(
        pytester,
        """
        import pytest

        def test_calls(compress, forward_calls):
            with pytest.raises(AssertionError, match="compressed model produced NaN") as info:
                compress("breaks", quantize="int8", max_size_ratio=1.0)  # no metric budget
            assert info.value.result.sensitivity is None
            assert sum(forward_calls.values()) == 8  # 4 float batches, 4 compressed: no more

        @pytest.mark.compress(quantize="int8", max_accuracy_drop=0.01, model="breaks")
        def test_marker(): pass
        """,
        conftest_extra="""
        FLOAT = {}

        class Breaks(Counted):
            # NaN as soon as its weights are not the float ones: only compressed copies
            def forward(self, x):
                out = super().forward(x)
                return out if torch.equal(self[0].weight, FLOAT["w"]) else out * float("nan")

        @pytest.fixture(scope="session")
        def breaks():
            torch.manual_seed(0)
            model = Breaks(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 4))
            FLOAT["w"] = model[0].weight.detach().clone()
            return model
        """,
    )
    result = pytester.runpytest("--compress-no-summary", "-p", "no:cacheprovider")
    result.assert_outcomes(failed=1, passed=1)
    result.stdout.fnmatch_lines(["*accuracy 100.0% -> nan: the compressed model produced NaN"])
    result.stdout.no_fnmatch_line("*most sensitive*")
    result.stdout.no_fnmatch_line("*layers together*")
