"""Stale results: the cache never serves numbers measured under other values.

A small project whose model's ``forward`` reads a module-level tensor and whose metric
reads a module-level dict, both set from ``settings.json``. Run once (recording the
baseline), rerun unchanged (served from the cache), then change the global: the check
is measured again and regresses against the baseline. A stale cache would have served
the old numbers, ``ok (cached)``.
"""

from __future__ import annotations

import json
import sys
import textwrap

import pytest

CONFTEST = """
import json
import pathlib
import threading

import pytest
import torch
from torch import nn

torch.set_num_threads(1)
SETTINGS = json.loads(pathlib.Path("settings.json").read_text())
BIAS = torch.zeros(4)  # a module-level tensor the model's forward reads
BIAS[0] = SETTINGS.get("bias", 0.0)
CLASSES = {"shift": SETTINGS.get("shift", 0)}  # a module-level dict the metric reads
LOCK = threading.Lock() if SETTINGS.get("lock") else None  # a lock has no readable state


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(16, 4)

    def forward(self, x):
        if LOCK is not None:
            with LOCK:
                return self.fc(x) + BIAS
        return self.fc(x) + BIAS


def shifted_accuracy(outputs, targets):
    predicted = (outputs.argmax(1) + CLASSES["shift"]) % 4
    return (predicted == targets).sum(), len(targets)


@pytest.fixture(scope="session")
def compress_model():
    torch.manual_seed(0)
    return Net()


@pytest.fixture(scope="session")
def compress_data():
    generator = torch.Generator().manual_seed(1)
    inputs = torch.randn(256, 16, generator=generator)
    torch.manual_seed(0)
    with torch.no_grad():
        targets = Net().fc(inputs).argmax(1)  # the labels of the unbiased model
    return [(inputs[i : i + 64], targets[i : i + 64]) for i in range(0, 256, 64)]


if SETTINGS.get("metric"):
    @pytest.fixture(scope="session")
    def compress_metric():
        return shifted_accuracy
"""

CHECK = """
import pytest

@pytest.mark.compress(quantize="int8", max_accuracy_drop=0.99)
def test_int8():
    pass
"""


@pytest.fixture(autouse=True)
def _fresh_sources(monkeypatch):
    # the conftest is rewritten within a second: always compile the current source
    monkeypatch.setattr(sys, "dont_write_bytecode", True)
    monkeypatch.delenv("GITHUB_STEP_SUMMARY", raising=False)


def project(pytester: pytest.Pytester, **settings: object) -> None:
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(test_project=textwrap.dedent(CHECK))
    configure(pytester, **settings)


def configure(pytester: pytest.Pytester, **settings: object) -> None:
    (pytester.path / "settings.json").write_text(json.dumps(settings))


def record(pytester: pytest.Pytester) -> pytest.RunResult:
    result = pytester.runpytest(
        "--compress-baseline=baseline.json", "--compress-update-baseline", "-rA"
    )
    result.assert_outcomes(passed=1)
    return result


def gate(pytester: pytest.Pytester) -> pytest.RunResult:
    return pytester.runpytest("--compress-baseline=baseline.json", "-rA")


def cached(result: pytest.RunResult) -> bool:
    return any(line.endswith("(cached)") for line in result.stdout.lines)


@pytest.mark.parametrize(
    ("before", "after"),
    [({}, {"bias": 100.0}), ({"metric": True}, {"metric": True, "shift": 1})],
    ids=["model-reads-a-module-tensor", "metric-reads-a-module-dict"],
)
def test_a_changed_global_is_measured_again_and_regresses(pytester, before, after):
    project(pytester, **before)
    assert not cached(record(pytester))
    unchanged = gate(pytester)
    unchanged.assert_outcomes(passed=1)
    assert cached(unchanged)  # the cache works: what follows is not a cache that is off
    configure(pytester, **after)
    result = gate(pytester)
    assert not cached(result)
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["test_project.py::test_int8 * REGRESSED"])


def test_a_global_that_cannot_be_fingerprinted_is_not_cached_and_the_report_says_why(
    pytester,
):
    project(pytester, lock=True)
    record(pytester)
    result = record(pytester)
    assert not cached(result)
    result.stdout.fnmatch_lines(
        [
            "*not cached: model compress_model holds a _thread.lock (global LOCK read by "
            "Net.forward), which cannot be fingerprinted*"
        ]
    )


def check_entry(pytester: pytest.Pytester):
    (path,) = (pytester.path / ".pytest_cache" / "v" / "pytest-compress").rglob("check/*")
    return path


@pytest.mark.parametrize(
    "corrupt",
    [
        # one digit of the compressed metric changed (1.0 -> 0.0, or the first other digit)
        lambda text: (
            text.replace('"compressed_metric": 1.0', '"compressed_metric": 0.0')
            if '"compressed_metric": 1.0' in text
            else text.replace('"compressed_metric": 0.', '"compressed_metric": 1.', 1)
        ),
        lambda text: json.dumps({**json.loads(text), "compressed_metric": float("inf")}),
    ],
    ids=["one-digit", "infinity"],
)
def test_a_corrupted_but_valid_looking_entry_is_measured_again_and_rewritten(pytester, corrupt):
    project(pytester)
    record(pytester)
    path = check_entry(pytester)
    original = path.read_text()
    corrupted = corrupt(original)
    assert corrupted != original and json.loads(corrupted).keys() == json.loads(original).keys()
    path.write_text(corrupted)
    result = record(pytester)
    assert not cached(result)  # measured again, never served
    assert json.loads(path.read_text()) == json.loads(original)  # and rewritten
    assert cached(record(pytester))
