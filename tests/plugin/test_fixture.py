"""The ``compress`` fixture: a callable for parametrised and custom checks, through pytester."""

from __future__ import annotations

from pytest_compress.plugin.markers import CALL_SIGNATURE, FIXTURE_ARGUMENTS, MARKER_SIGNATURE
from tests.plugin_projects import make_project


def test_without_budgets_it_returns_the_result_and_never_raises(pytester):
    make_project(
        pytester,
        """
        def test_sweep(compress):
            drops = {}
            for bits in (8, 4, 2):
                result = compress(quantize=f"int{bits}")
                assert result.budgets.given() == {} and result.passed
                drops[bits] = result.accuracy_drop
            assert drops[8] <= drops[2] and drops[2] > 0
        """,
    )
    result = pytester.runpytest()
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(
        [
            "*= compression report =*",
            "test_project.py::test_sweep [[]int2 per-channel[]] * ok",
            "test_project.py::test_sweep [[]int4 per-channel[]] * ok",
            "test_project.py::test_sweep [[]int8 per-channel[]] * ok",
        ]
    )


def test_with_a_broken_budget_it_raises_budget_exceeded(pytester):
    make_project(
        pytester,
        """
        import pytest
        from pytest_compress.budgets import BudgetExceeded

        def test_caught(compress):
            with pytest.raises(AssertionError) as raised:
                compress(quantize="int2", max_accuracy_drop=0.001, max_size="1 MB")
            assert isinstance(raised.value, BudgetExceeded)
            assert not raised.value.result.passed
            assert str(raised.value) == raised.value.result.explain()

        def test_uncaught(compress):
            compress(quantize="int2", prune=0.8, max_accuracy_drop=0.001)

        def test_within(compress):
            assert compress(quantize="int8", max_accuracy_drop=0.05).passed
        """,
    )
    result = pytester.runpytest()
    result.assert_outcomes(passed=2, failed=1)
    result.stdout.fnmatch_lines(
        [
            "*_ test_uncaught _*",
            '>       compress(quantize="int2", prune=0.8, max_accuracy_drop=0.001)',
            "E   *BudgetExceeded: compression budget exceeded for int2 per-channel + prune 80%*",
            "E         accuracy 100.0% -> *: drop * pp > 0.1 pp allowed",
        ]
    )


def test_model_and_data_may_be_fixture_names_or_objects(pytester):
    make_project(
        pytester,
        """
        import torch
        from torch import nn
        from conftest import make_data

        def test_names(compress):
            result = compress("student", "student_data", quantize="int8")
            assert (result.model, result.data) == ("student", "student_data")

        def test_objects(compress):
            torch.manual_seed(4)
            model = nn.Sequential(nn.Linear(16, 4))
            result = compress(model, make_data(model), quantize="int8")
            assert (result.model, result.data) == ("<Sequential>", "<list>")
            assert result.float_metric == 1.0
        """,
        conftest_extra="""
        @pytest.fixture
        def student():
            torch.manual_seed(3)
            return nn.Sequential(nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 4))

        @pytest.fixture
        def student_data(student):
            return make_data(student)
        """,
    )
    result = pytester.runpytest()
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(
        [
            "test_project.py::test_names [[]int8 per-channel on student/student_data[]] *ok",
            "test_project.py::test_objects [[]int8 per-channel on Sequential/list[]] *ok",
        ]
    )


def test_the_same_recipe_twice_gets_distinct_report_entries(pytester):
    make_project(
        pytester,
        """
        def test_twice(compress):
            compress(quantize="int8")
            compress(quantize="int8")
        """,
    )
    result = pytester.runpytest()
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(
        [
            # sorted by check id
            "test_project.py::test_twice [[]int8 per-channel #2[]] *ok",
            "test_project.py::test_twice [[]int8 per-channel[]] *ok",
        ]
    )


def test_bad_arguments_raise_with_the_valid_forms(pytester):
    make_project(
        pytester,
        """
        import pytest

        def test_unknown_budget(compress):
            with pytest.raises(TypeError, match="max_acc_drop.*did you mean max_accuracy_drop"):
                compress(quantize="int8", max_acc_drop=0.1)

        def test_bad_spec(compress):
            with pytest.raises(ValueError, match="compress.*quantize.*int2"):
                compress(quantize="int99")

        def test_negative_budget(compress):
            with pytest.raises(ValueError, match="max_size_ratio: must not be negative"):
                compress(quantize="int8", max_size_ratio=-1)

        def test_nothing_to_compress(compress):
            with pytest.raises(ValueError, match="nothing to compress"):
                compress(max_accuracy_drop=0.1)
        """,
    )
    pytester.runpytest().assert_outcomes(passed=4)


def test_the_callable_takes_every_argument_of_the_marker() -> None:
    # one table: the callable's parameters are the marker's, model and data first
    assert list(CALL_SIGNATURE.parameters)[:2] == ["model", "data"]
    assert set(CALL_SIGNATURE.parameters) == set(MARKER_SIGNATURE.parameters)
    for name, parameter in MARKER_SIGNATURE.parameters.items():
        if name not in FIXTURE_ARGUMENTS:  # a fixture argument defaults to None: the marker's
            assert CALL_SIGNATURE.parameters[name].default == parameter.default, name


def test_a_second_model_is_checked_with_its_own_metric_and_data(pytester):
    # a sweep over another model, data, metric and calibration data, all given as objects
    make_project(
        pytester,
        """
        import torch
        from torch import nn
        from pytest_compress import model_metric

        def test_student(compress, compress_model):
            torch.manual_seed(3)
            student = nn.Sequential(nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 4)).eval()
            inputs = torch.randn(64, 16)
            with torch.no_grad():
                targets = student(inputs)
            data = [(inputs, targets)]

            def mse(model, batches):
                with torch.no_grad():
                    return float(sum(((model(x) - y) ** 2).mean() for x, y in batches))

            result = compress(
                student,
                data,
                quantize="w8a8",
                metric=model_metric(mse),
                calibration_data=[(inputs[:8], targets[:8])],
                higher_is_better=False,
                max_accuracy_drop=0.05,
            )
            assert (result.metric, result.float_metric) == ("mse", 0.0)
            assert 0 < result.compressed_metric <= 0.05
            assert result.model == "<Sequential>"
        """,
    )
    result = pytester.runpytest()
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["test_project.py::test_student [[]w8a8*on Sequential/list[]]*ok"])
