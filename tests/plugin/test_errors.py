"""Whose error is it? Library input errors read as one line; the user's keep their traceback."""

from __future__ import annotations

import re
import textwrap

import pytest

CONFTEST = textwrap.dedent(
    """
    import pytest
    import torch
    from torch import nn

    torch.set_num_threads(1)


    class Fragile(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 2)

        def forward(self, x):
            if not self.training and x.shape[0] == 3:
                raise ValueError("the model of the user broke on a batch of three")
            return self.fc(x)


    @pytest.fixture(scope="session")
    def compress_model():
        torch.manual_seed(0)
        return Fragile()


    @pytest.fixture(scope="session")
    def nan_model():
        model = nn.Linear(4, 2)
        with torch.no_grad():
            model.weight[0, 0] = float("nan")
        return model


    @pytest.fixture(scope="session")
    def compress_data():
        torch.manual_seed(1)
        return [(torch.randn(3, 4), torch.tensor([0, 1, 0]))]
    """
)

TESTS = textwrap.dedent(
    """
    import pytest

    @pytest.mark.compress(quantize="int8", max_accuracy_drop=0.5)
    def test_marker_user_error():
        pass

    def test_fixture_user_error(compress):
        compress(quantize="int8", max_accuracy_drop=0.5)

    @pytest.mark.compress(quantize="int8", max_accuracy_drop=0.5, model="nan_model")
    def test_marker_library_error():
        pass
    """
)


NEXT_REPORT = re.compile(r"_+ (ERROR at \w+ of )?test\w* _+$|=+ .* =+$")


def section(result: pytest.RunResult, test: str) -> str:
    """One test's report, up to the next one or the short summary (cut or not by width)."""
    text = result.stdout.str().split("short test summary info", 1)[0]
    start = text.index(f"{test} _")  # "_ test _" or "_ ERROR at setup of test _"
    rest = text[start:].split("\n")
    ends = [i for i, line in enumerate(rest) if i and NEXT_REPORT.match(line)]
    return "\n".join(rest[: ends[0]] if ends else rest)


def test_user_errors_keep_their_traceback_and_library_errors_read_as_one_line(
    pytester: pytest.Pytester,
) -> None:
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(test_errors=TESTS)
    outcome = pytester.runpytest("-p", "no:cacheprovider", "--compress-no-summary")
    outcome.assert_outcomes(failed=1, errors=2)  # a marker check runs at setup
    for test in ("test_marker_user_error", "test_fixture_user_error"):  # marker and fixture
        text = section(outcome, test)
        assert 'raise ValueError("the model of the user broke on a batch of three")' in text
        assert "conftest.py" in text
        assert "could not run the check" not in text
    text = section(outcome, "test_marker_library_error")
    assert "pytest-compress could not run the check of test_errors.py::" in text
    assert "NaN" in text or "nan" in text
    assert "Traceback" not in text and "raise " not in text
