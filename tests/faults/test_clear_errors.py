"""Inputs the plugin cannot use read as one clear line, never as a traceback through it.

Each fault (a model fixture that returns no model, a model on the meta device, a batch
that does not fit the model, a metric returning a vector) must fail the test with one
"pytest-compress could not run the check of ..." line naming the culprit: printed once
(not again under "During handling of the above exception"), with no traceback into
pytest_compress. NumPy batches are converted, so they measure what tensors measure.
The persistent cache stays on (the default): fingerprinting must not be what fails.
"""

from __future__ import annotations

import pytest

from tests.plugin_projects import make_project

EXTRA = """
import numpy as np

@pytest.fixture
def state_dict_model(compress_model):
    return compress_model.state_dict()

@pytest.fixture
def function_model():
    return make_model

@pytest.fixture
def meta_model():
    with torch.device("meta"):
        return nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 4))

@pytest.fixture
def misfit_data(compress_data):
    return [compress_data[0], (torch.randn(64, 8), compress_data[1][1])]

@pytest.fixture
def numpy_data(compress_data):
    return [(x.numpy().astype(np.float64), y.numpy()) for x, y in compress_data]

@pytest.fixture
def vector_metric():
    def correct(outputs, targets):
        return (outputs.argmax(1) == targets).float(), len(targets)
    return correct
"""


def could_not_run(pytester: pytest.Pytester, marker: str) -> str:
    """The output of one marked test that must not run, after checking it reads as one line."""
    make_project(
        pytester,
        f"""
        import pytest

        @pytest.mark.compress(quantize="int8", max_accuracy_drop=0.01, {marker})
        def test_check(): pass
        """,
        conftest_extra=EXTRA,
    )
    result = pytester.runpytest("--compress-no-summary")
    result.assert_outcomes(errors=1)
    # The short summary repeats the line, cut or whole by terminal width: judge the report above it.
    text = result.stdout.str().split("short test summary info", 1)[0]
    head = "pytest-compress could not run the check of test_project.py::test_check: "
    assert text.count(head) == 1, text
    assert "During handling" not in text and "Traceback" not in text, text
    assert "pytest_compress" not in text.replace("pytest-compress", ""), text
    return text.split(head, 1)[1].split("\n", 1)[0]


def test_a_model_fixture_returning_a_state_dict(pytester: pytest.Pytester) -> None:
    message = could_not_run(pytester, 'model="state_dict_model"')
    assert "state_dict_model is a OrderedDict (a state_dict?), not a torch.nn.Module" in message
    assert "load_state_dict" in message


def test_a_model_fixture_returning_a_function(pytester: pytest.Pytester) -> None:
    message = could_not_run(pytester, 'model="function_model"')
    assert "function_model is a function, not a torch.nn.Module" in message


def test_a_model_on_the_meta_device(pytester: pytest.Pytester) -> None:
    message = could_not_run(pytester, 'model="meta_model"')
    assert "meta_model has its weights on the meta device" in message


def test_a_batch_that_does_not_fit_the_model(pytester: pytest.Pytester) -> None:
    message = could_not_run(pytester, 'data="misfit_data"')
    assert "batch 1 does not fit the model" in message
    assert "float32 tensor of shape (64, 8)" in message
    assert "mat1 and mat2 shapes cannot be multiplied" in message


def test_a_metric_returning_a_vector_sum(pytester: pytest.Pytester) -> None:
    message = could_not_run(pytester, 'metric="vector_metric"')
    assert "on batch 0 its sum is a tensor of shape (64,)" in message


def test_numpy_batches_measure_what_tensors_measure(pytester: pytest.Pytester) -> None:
    make_project(
        pytester,
        """
        import pytest

        @pytest.mark.compress(quantize="int4", max_size_ratio=1.0, data="numpy_data")
        def test_numpy(compression):
            pytest.numpy_result = compression

        @pytest.mark.compress(quantize="int4", max_size_ratio=1.0)
        def test_tensors(compression):
            numpy = pytest.numpy_result
            assert compression.float_metric == numpy.float_metric == 1.0
            assert compression.compressed_metric == numpy.compressed_metric
        """,
        conftest_extra=EXTRA,
    )
    pytester.runpytest("--compress-no-summary", "-p", "no:randomly").assert_outcomes(passed=2)
