"""The plugin's pure parts without pytester: sizes, budgets, marker validation, the baseline
file and the failure text."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from pytest_compress import files as files_module
from pytest_compress.budgets import BudgetCheck, Budgets, at_least, at_most, check_budgets
from pytest_compress.checks.request import Recipe
from pytest_compress.checks.result import CompressionResult
from pytest_compress.engine.specs import PruneSpec, QuantSpec
from pytest_compress.plugin.baseline import Baseline, BaselineError, render, write_baseline
from pytest_compress.plugin.markers import ARGUMENTS, MARKER_LINE, MarkerError, parse_marker
from pytest_compress.units import distinct, format_drop, format_size, parse_size

# --- sizes ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (1234, 1234),
        ("0", 0),
        ("2 MB", 2_000_000),
        ("512 kB", 512_000),
        ("512kb", 512_000),
        ("1.5 MiB", 1_572_864),
        ("1.1 kB", 1100),  # exact decimal arithmetic, not 1100.0000000000002
        ("3 GiB", 3 * 1024**3),
        ("1 GB", 10**9),
        ("  7 B ", 7),
        ("1.0005 kB", 1000),  # a fraction of a byte is dropped: the budget is a ceiling
    ],
)
def test_parse_size_accepts_bytes_and_decimal_and_binary_units(text, expected):
    assert parse_size(text) == expected


@pytest.mark.parametrize("bad", ["2 XB", "MB", "-1 MB", "1e3", "", "two MB", -5, 2.5, True, None])
def test_parse_size_rejects_what_is_not_a_size(bad):
    with pytest.raises(ValueError, match="size|MB"):
        parse_size(bad)


def test_format_size_uses_decimal_units():
    assert format_size(999) == "999 B"
    assert format_size(246_100) == "246.1 kB"
    assert format_size(17_200_000) == "17.2 MB"
    assert format_size(3_000_000_000) == "3.0 GB"


def test_distinct_widens_precision_until_the_numbers_differ():
    assert distinct(0.0201, 0.02, lambda v, d: format_drop(v, True, d)) == ("2.01 pp", "2.00 pp")
    assert distinct(0.02, 0.02, lambda v, d: format_drop(v, True, d)) == ("2.0 pp", "2.0 pp")
    assert distinct(0.029, 0.02, lambda v, d: format_drop(v, True, d)) == ("2.9 pp", "2.0 pp")


# --- budgets ----------------------------------------------------------------------------


def test_a_value_exactly_at_its_budget_passes_in_both_directions():
    drop = 0.97 - 0.95  # 0.020000000000000018 in floating point
    assert drop > 0.02
    assert at_most(drop, 0.02)
    assert not at_most(0.0201, 0.02)
    assert at_least(0.8 - 1e-17, 0.8)
    assert not at_least(0.799, 0.8)
    # bytes are integers and are compared exactly
    assert at_most(1000, 1000)
    assert not at_most(1001, 1000)


def test_check_budgets_lists_every_broken_budget_in_order():
    budgets = Budgets(
        max_accuracy_drop=0.01,
        max_relative_drop=0.5,
        max_size_ratio=0.1,
        max_size=100,
        min_sparsity=0.9,
    )
    checks = check_budgets(
        budgets,
        accuracy_drop=0.02,
        relative_drop=0.02,
        size_ratio=0.2,
        compressed_size=100,
        sparsity=0.5,
    )
    assert [(c.budget, c.ok) for c in checks] == [
        ("max_accuracy_drop", False),
        ("max_relative_drop", True),
        ("max_size_ratio", False),
        ("max_size", True),
        ("min_sparsity", False),
    ]


def test_a_nan_measurement_breaks_its_budget():
    (check,) = check_budgets(
        Budgets(max_accuracy_drop=1.0),
        accuracy_drop=math.nan,
        relative_drop=math.nan,
        size_ratio=0.1,
        compressed_size=1,
        sparsity=0.0,
    )
    assert not check.ok


# --- the marker's API -------------------------------------------------------------------


def test_marker_line_is_generated_from_the_signature():
    assert MARKER_LINE.startswith("compress(quantize=None, prune=None, max_accuracy_drop=None")
    for name in ARGUMENTS:
        assert f"{name}=" in MARKER_LINE
    assert "model='compress_model'" in MARKER_LINE
    assert "higher_is_better=True" in MARKER_LINE


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


# --- the failure text -------------------------------------------------------------------


def make_result(**changes) -> CompressionResult:
    fields = dict(
        float_metric=0.978,
        compressed_metric=0.949,
        accuracy_drop=0.978 - 0.949,
        relative_drop=(0.978 - 0.949) / 0.978,
        float_size=246_100,
        compressed_size=17_200,
        size_ratio=17_200 / 246_100,
        sparsity=0.8,
        recipe="int4 per-channel + prune 80% (global, magnitude)",
        prune=PruneSpec(amount=0.8, scope="global"),
        budgets=Budgets(max_accuracy_drop=0.02, max_size_ratio=0.1),
    )
    fields.update(changes)
    measured = check_budgets(
        fields["budgets"],
        accuracy_drop=fields["accuracy_drop"],
        relative_drop=fields["relative_drop"],
        size_ratio=fields["size_ratio"],
        compressed_size=fields["compressed_size"],
        sparsity=fields["sparsity"],
    )
    return CompressionResult(checks=tuple(measured), **fields)


def test_explain_reads_like_the_design():
    result = make_result()
    assert not result.passed
    assert [v.budget for v in result.violations] == ["max_accuracy_drop"]
    assert result.explain().splitlines() == [
        "compression budget exceeded for int4 per-channel + prune 80% (global, magnitude):",
        "  accuracy 97.8% -> 94.9%: drop 2.9 pp > 2.0 pp allowed",
        "  size 246.1 kB -> 17.2 kB (ratio 0.07, budget 0.10): ok",
        "  sparsity 80.0%",
        "  model compress_model, data compress_data, device cpu",
    ]


def test_explain_of_a_lower_is_better_metric_speaks_of_an_increase():
    result = make_result(
        float_metric=0.30,
        compressed_metric=0.36,
        accuracy_drop=0.06,
        relative_drop=0.2,
        metric="cross_entropy",
        higher_is_better=False,
        budgets=Budgets(max_accuracy_drop=0.05, max_relative_drop=0.1),
    )
    lines = result.explain().splitlines()
    assert lines[1] == "  cross_entropy 0.3 -> 0.36: increase 0.06 > 0.05 allowed"
    assert lines[2] == "  cross_entropy relative increase 20.0% > 10.0% allowed"


def test_explain_of_a_baseline_regression_gives_both_numbers():
    result = make_result(budgets=Budgets()).with_checks(
        [
            BudgetCheck("baseline_metric", 0.949, 0.955, False, reference=0.96),
            BudgetCheck("baseline_size", 17_200, 17_170.0, False, reference=17_000),
        ]
    )
    text = result.explain()
    assert text.startswith("compression regressed vs baseline for int4")
    assert (
        "regressed vs baseline: accuracy 94.9% < baseline 96.0% by more than the "
        "tolerance 0.5 pp" in text
    )
    assert "regressed vs baseline: compressed size 17.2 kB > baseline 17.0 kB + 1%" in text


def test_to_dict_is_json_safe():
    entry = make_result().to_dict()
    assert json.loads(json.dumps(entry)) == entry
    assert entry["prune"]["amount"] == 0.8
    assert entry["violations"][0]["budget"] == "max_accuracy_drop"
    assert entry["passed"] is False


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


def test_stale_checks_are_those_the_run_should_have_produced():
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
    stale = stored.stale(["a.py::test_ran", "a.py::test_kept"], ran.__contains__)
    # the callable's entry belongs to test_ran, which ran and did not produce it
    assert stale == ["a.py::test_ran [int4 per-channel]"]
    updated = stored.updated({"a.py::test_new": ENTRY, "a.py::test_ran": {"x": 1}}, stale)
    assert updated == {
        "a.py::test_ran": {"x": 1},
        "a.py::test_not_run": ENTRY,
        "a.py::test_kept": {**ENTRY, "test": "a.py::test_kept"},
        "a.py::test_new": ENTRY,
    }


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
