"""The plugin's pure parts without pytester: marker validation, the baseline file, and the
plugin's modules staying free of torch."""

from __future__ import annotations

import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from pytest_compress import files as files_module
from pytest_compress.budgets import Budgets
from pytest_compress.checks.request import Recipe
from pytest_compress.checks.result import CompressionResult
from pytest_compress.engine.specs import PruneSpec, QuantSpec
from pytest_compress.plugin.baseline import Baseline, BaselineError, render, write_baseline
from pytest_compress.plugin.markers import MarkerError, parse_marker
from tests.results import make_result

# --- the marker's API -------------------------------------------------------------------


def test_parse_marker_turns_shorthands_into_specs_and_budgets():
    request = parse_marker((), {"quantize": "int4", "prune": 0.8, "max_size": "2 MB"})
    assert request.check.recipe == Recipe(QuantSpec(bits=4), PruneSpec(amount=0.8))
    assert request.check.budgets == Budgets(max_size=2_000_000)
    assert request.check.higher_is_better is True
    assert (request.fixtures.model, request.fixtures.data) == ("compress_model", "compress_data")


@pytest.mark.parametrize(
    ("args", "kwargs", "argument", "words"),
    [
        (("int8",), {}, "positional arguments", "keyword arguments only"),
        ((), {"quantize": "int8", "max_acc_drop": 0.1}, "max_acc_drop", "max_accuracy_drop"),
        ((), {"quantize": "int9x", "max_accuracy_drop": 0.1}, "quantize", "int2"),
        ((), {"prune": 1.5, "max_accuracy_drop": 0.1}, "prune", "0 < amount < 1"),
        ((), {"quantize": "int8", "max_accuracy_drop": -0.1}, "max_accuracy_drop", "negative"),
        ((), {"quantize": "int8", "max_accuracy_drop": "1%"}, "max_accuracy_drop", "number"),
        ((), {"quantize": "int8", "max_size_ratio": True}, "max_size_ratio", "number"),
        ((), {"quantize": "int8", "max_relative_drop": math.inf}, "max_relative_drop", "finite"),
        ((), {"quantize": "int8", "max_size": "2 XB"}, "max_size", "MiB"),
        ((), {"quantize": "int8", "max_size": 2.5e6}, "max_size", "int of bytes"),
        ((), {"quantize": "int8", "min_sparsity": 1.5}, "min_sparsity", "between 0 and 1"),
        ((), {"quantize": "int8", "max_size_ratio": 0.3, "model": 3}, "model", "fixture"),
        ((), {"quantize": "int8", "max_size_ratio": 0.3, "data": ""}, "data", "fixture"),
        (
            (),
            {"quantize": "int8", "max_size_ratio": 0.3, "higher_is_better": 1},
            "higher_is_better",
            "True",
        ),
        ((), {"quantize": "int8"}, "budget", "cannot fail"),
        ((), {"max_accuracy_drop": 0.1}, "quantize/prune", "nothing to compress"),
    ],
)
def test_parse_marker_names_the_argument_and_the_valid_forms(args, kwargs, argument, words):
    with pytest.raises(MarkerError, match=words) as raised:
        parse_marker(args, kwargs)
    assert raised.value.argument == argument


# --- the baseline file ------------------------------------------------------------------

ENTRY = {"compressed_metric": 0.95, "compressed_size": 1000}


def test_baseline_text_is_sorted_and_stable(tmp_path):
    forward = {"b::test": dict(ENTRY), "a::test": {"compressed_size": 1, "compressed_metric": 1.0}}
    backward = dict(reversed(list(forward.items())))
    assert render(forward) == render(backward)
    text = render(forward)
    assert text.index('"a::test"') < text.index('"b::test"')
    assert text.endswith("}\n")
    write_baseline(tmp_path / "b.json", forward)
    assert Baseline.load(tmp_path / "b.json").checks == forward


def test_baseline_write_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / ".compress-baseline.json"
    write_baseline(path, {"old": ENTRY})
    before = path.read_bytes()

    def crash(*args):
        raise OSError("disk full")

    monkeypatch.setattr(files_module.os, "replace", crash)
    with pytest.raises(OSError, match="disk full"):
        write_baseline(path, {"new": ENTRY})
    assert path.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == [".compress-baseline.json"]  # no temporary left


def test_missing_baseline_is_none(tmp_path):
    assert Baseline.load(tmp_path / "absent.json") is None


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("{not json", "not valid JSON"),
        ("[]", "top level is a list"),
        ('{"schema_version": 2, "checks": {}}', "schema_version is 2"),
        ('{"schema_version": 1}', '"checks" is missing'),
        ('{"schema_version": 1, "checks": {"t": {"compressed_size": 1}}}', "compressed_metric"),
        (
            '{"schema_version": 1, "checks": {"t": {"compressed_metric": 1, '
            '"compressed_size": -1}}}',
            "compressed_size",
        ),
    ],
)
def test_invalid_baseline_names_the_file_and_the_problem(tmp_path, text, words):
    path = tmp_path / "base.json"
    path.write_text(text)
    with pytest.raises(BaselineError, match=words) as raised:
        Baseline.load(path)
    assert str(path) in str(raised.value)


def test_baseline_compare_allows_the_tolerance_and_one_percent_of_size():
    stored = Baseline(Path("b.json"), {"t": {"compressed_metric": 0.9, "compressed_size": 1000}})

    def result(metric: float, size: int, higher_is_better: bool = True) -> CompressionResult:
        return make_result(
            compressed_metric=metric, compressed_size=size, higher_is_better=higher_is_better
        )

    assert all(check.ok for check in stored.compare("t", result(0.895, 1010), 0.005))
    worse = stored.compare("t", result(0.894, 1011), 0.005)
    assert [check.ok for check in worse] == [False, False]
    assert stored.compare("t", result(0.905, 1000, higher_is_better=False), 0.005)[0].ok
    assert not stored.compare("t", result(0.906, 1000, higher_is_better=False), 0.005)[0].ok
    assert stored.compare("other", result(0.895, 1010), 0.005) is None


def test_stale_checks_are_those_the_run_proves_gone():
    stored = Baseline(
        Path("b.json"),
        {
            "a.py::test_ran": ENTRY,
            "a.py::test_ran [int4 per-channel]": ENTRY,
            "a.py::test_not_run": ENTRY,
            "a.py::test_kept": {**ENTRY, "test": "a.py::test_kept"},
        },
    )
    ran = {"a.py::test_ran", "a.py::test_kept"}
    stale, kept = stored.triage(
        ["a.py::test_ran", "a.py::test_kept"], lambda test: None if test in ran else "not run"
    )
    # the callable's entry belongs to test_ran, which ran and did not produce it
    assert stale == ["a.py::test_ran [int4 per-channel]"]
    assert kept == {"not run": ["a.py::test_not_run"]}


def test_pytest_help_loads_the_plugin_without_importing_torch(tmp_path):
    # `pytest --help` (every pytest start) loads the plugin through its entry point; torch
    # is imported only when a check runs. Run where no ini file turns the plugin off.
    script = textwrap.dedent(
        """
        import contextlib, io, sys
        import pytest
        with contextlib.redirect_stdout(io.StringIO()):
            code = pytest.main(["--help"])
        loaded = "pytest_compress.plugin" in sys.modules
        torch = sorted(name for name in sys.modules if name.split(".")[0] == "torch")
        print(code, loaded, torch)
        """
    )
    output = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, cwd=tmp_path
    ).stdout
    assert output.strip() == "0 True []"


@pytest.mark.parametrize("uses_compress", [False, True])
def test_the_check_runner_loads_before_the_tests_only_when_one_runs_a_check(
    tmp_path, uses_compress
):
    # loaded up front (not inside the first check's timings), and never for a suite with
    # no check: a plain test run stays as light as it was
    body = "def test_checks(compress):\n" if uses_compress else "def test_plain():\n"
    (tmp_path / "test_it.py").write_text(
        "import sys\n\n\n"
        + body
        + "    print('loaded', 'pytest_compress.checks.runner' in sys.modules)\n"
    )
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-s", "-p", "no:randomly", "test_it.py"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"loaded {uses_compress}" in done.stdout


def test_a_hint_is_offered_only_for_a_close_misspelling():
    with pytest.raises(MarkerError, match=r"did you mean max_accuracy_drop\?") as close:
        parse_marker((), {"quantize": "int8", "max_acc_drop": 0.1})
    with pytest.raises(MarkerError) as far:
        parse_marker((), {"quantize": "int8", "max_cosine_drop": 0.1})
    assert close.value.argument == far.value.argument.replace("cosine", "acc")
    assert "did you mean" not in str(far.value)
    assert "valid arguments: quantize, prune, max_accuracy_drop" in str(far.value)
