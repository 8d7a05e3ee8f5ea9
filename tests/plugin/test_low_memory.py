"""--compress-low-memory through pytest: the same numbers as a deep copy, the mode reported.

One project runs in both modes: plain checks, a pruned-and-quantized one, a search, a
failing check (with its per-layer sensitivity) and keep_float="auto". Every number of the
JSON report must match; only the mode's flag and note differ.
"""

from __future__ import annotations

import pytest

from tests.plugin_projects import make_project, read_json

pytest_plugins = ["pytester"]

CHECKS = """
import pytest

@pytest.mark.compress(quantize="int8", max_accuracy_drop=0.05)
def test_int8():
    pass

@pytest.mark.compress(quantize="int4", prune=0.5, max_accuracy_drop=0.5)
def test_int4_pruned():
    pass

@pytest.mark.compress(search="sparsity", max_accuracy_drop=0.05)
def test_search():
    pass

@pytest.mark.compress(quantize="int2", max_accuracy_drop=0.0)
def test_failing():
    pass

@pytest.mark.compress(quantize="int2", keep_float="auto", max_accuracy_drop=0.02)
def test_keep_float():
    pass

@pytest.mark.compress(prune="2:4", quantize="fp8-e4m3", max_accuracy_drop=0.5)
def test_fp8_2_4():
    pass
"""

NUMBERS = (
    "float_metric",
    "compressed_metric",
    "accuracy_drop",
    "float_size",
    "compressed_size",
    "size_ratio",
    "sparsity",
    "passed",
    "recipe",
    "violations",
    "search",
    "sensitivity",
    "keep_float",
    "broken_invariants",
)


def run(pytester: pytest.Pytester, *options: str) -> dict:
    """The JSON report of a cold run that rewrites the baseline, with the baseline read
    back under ``"baseline"``."""
    report = pytester.path / "report.json"
    result = pytester.runpytest(
        "--compress-report=report.json",
        "--compress-no-cache",
        "--compress-update-baseline",
        *options,
    )
    result.assert_outcomes(passed=5, failed=1)
    return {**read_json(report), "baseline": read_json(pytester.path / ".compress-baseline.json")}


def by_test(document: dict) -> dict[str, dict]:
    return {check["test"].split("::")[-1]: check for check in document["checks"]}


def test_both_modes_give_the_same_numbers_and_the_report_names_the_mode(pytester) -> None:
    make_project(pytester, CHECKS)
    deep = run(pytester, "--compress-low-memory=off")
    lazy = run(pytester, "--compress-low-memory=on")
    deep_checks, lazy_checks = by_test(deep), by_test(lazy)
    assert deep_checks.keys() == lazy_checks.keys() and len(deep_checks) == 6
    for name, check in deep_checks.items():
        for field in NUMBERS:
            assert check[field] == lazy_checks[name][field], (name, field)
        assert check["low_memory"] is False and lazy_checks[name]["low_memory"] is True
    assert deep["baseline"] == lazy["baseline"]
    assert deep_checks["test_failing"]["sensitivity"]["layers"]  # compared, not empty
    assert deep_checks["test_keep_float"]["keep_float"]["kept_float"]
    assert not any("low-memory" in note for note in deep["notes"])
    assert any(
        "low-memory mode for compress_model (--compress-low-memory=on)" in note
        for note in lazy["notes"]
    )


def test_auto_turns_the_mode_on_above_its_share_of_the_available_memory(pytester) -> None:
    make_project(pytester, CHECKS.split('@pytest.mark.compress(quantize="int4"')[0])
    report = pytester.path / "report.json"
    for share, expected in (("1", False), ("0.0000001", True)):
        result = pytester.runpytest(
            "--compress-report=report.json", f"--compress-low-memory-share={share}"
        )
        result.assert_outcomes(passed=1)
        document = read_json(report)
        assert document["checks"][0]["low_memory"] is expected
        notes = [note for note in document["notes"] if "low-memory" in note]
        assert bool(notes) is expected
        if expected:
            assert "is over 0% of the" in notes[0] and "available" in notes[0]


def test_a_cached_result_serves_the_other_mode(pytester) -> None:
    make_project(pytester, CHECKS.split('@pytest.mark.compress(quantize="int4"')[0])
    pytester.runpytest("--compress-report=report.json", "--compress-low-memory=on")
    first = read_json(pytester.path / "report.json")["checks"][0]
    pytester.runpytest("--compress-report=report.json", "--compress-low-memory=off")
    second = read_json(pytester.path / "report.json")["checks"][0]
    assert (first["cached"], second["cached"]) == (False, True)
    assert first["compressed_metric"] == second["compressed_metric"]


@pytest.mark.parametrize(
    "option, words",
    [
        ("--compress-low-memory=sometimes", "must be one of auto, on, off; got 'sometimes'"),
        ("--compress-low-memory-share=0", "above 0 and at most 1"),
        ("--compress-low-memory-share=1.5", "above 0 and at most 1"),
    ],
)
def test_bad_values_are_usage_errors(pytester, option, words) -> None:
    make_project(pytester, CHECKS)
    result = pytester.runpytest(option)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"*{words}*"])


def test_recovery_is_refused_in_the_low_memory_mode_with_the_way_out(pytester) -> None:
    make_project(
        pytester,
        """
        import pytest

        @pytest.mark.compress(prune=0.9, recover="finetune", max_accuracy_drop=0.99)
        def test_recovered():
            pass
        """,
        conftest_extra="""
        @pytest.fixture
        def finetune():
            def recover(model, data):
                return model
            return recover

        @pytest.fixture
        def compress_train_data(compress_data):
            return compress_data
        """,
    )
    result = pytester.runpytest("--compress-low-memory=on")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(
        ["*recover= fine-tunes a full copy of compress_model, which the low-memory mode*"]
    )
    result.stdout.fnmatch_lines(["*--compress-low-memory=off*"])
