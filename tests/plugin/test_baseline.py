"""The stored baseline as a regression gate, through pytester: record, compare, fail, update."""

from __future__ import annotations

import pytest

from tests.plugin_projects import make_project, read_json

# The model is degraded (noise added to its weights) when degrade.txt exists, while the
# data keep the labels of the original model: the accuracy of every recipe falls.
DEGRADABLE = """
import pathlib

@pytest.fixture(scope="session")
def compress_model():
    model = make_model()
    if pathlib.Path("degrade.txt").exists():
        generator = torch.Generator().manual_seed(7)
        with torch.no_grad():
            for parameter in model.parameters():
                parameter.add_(0.2 * torch.randn(parameter.shape, generator=generator))
    ORIGINAL.append(model)
    return model

@pytest.fixture(scope="session")
def compress_data():
    return make_data(make_model())
"""

CHECKS = """
import pytest

@pytest.mark.compress(quantize="int8", max_accuracy_drop=0.99)
def test_int8():
    pass

def test_sweep(compress):
    compress(quantize="int4")
"""


@pytest.fixture(autouse=True)
def _no_step_summary(monkeypatch):
    monkeypatch.delenv("GITHUB_STEP_SUMMARY", raising=False)


def test_the_baseline_cycle(pytester):
    make_project(pytester, CHECKS, conftest_extra=DEGRADABLE)
    path = pytester.path / ".compress-baseline.json"

    first = pytester.runpytest()
    first.assert_outcomes(passed=2)
    first.stdout.fnmatch_lines(
        ["baseline .compress-baseline.json: no baseline yet, recorded 2 checks"]
    )
    recorded = read_json(path)
    assert recorded["schema_version"] == 1
    assert list(recorded["checks"]) == [
        "test_project.py::test_int8",
        "test_project.py::test_sweep [int4 per-channel]",
    ]
    assert recorded["checks"]["test_project.py::test_int8"]["compressed_metric"] == 1.0
    text = path.read_text()

    second = pytester.runpytest()
    second.assert_outcomes(passed=2)
    second.stdout.fnmatch_lines(
        ["baseline .compress-baseline.json: 2 checks compared, 0 regressed, 0 new, 0 stale"]
    )
    assert path.read_text() == text  # comparing never rewrites

    (pytester.path / "degrade.txt").write_text("")
    degraded = pytester.runpytest()
    degraded.assert_outcomes(failed=2)
    degraded.stdout.fnmatch_lines(
        [
            "*_ test_int8 _*",
            "compression regressed vs baseline for int8 per-channel:",
            "  regressed vs baseline: accuracy *% < baseline 100.0% by more than the "
            "tolerance 0.5 pp",
            "*_ test_sweep _*",
            "E   *BudgetExceeded: compression regressed vs baseline for int4 per-channel:",
        ]
    )
    degraded.stdout.fnmatch_lines(
        [
            "test_project.py::test_int8 * REGRESSED",
            "baseline .compress-baseline.json: 2 checks compared, 2 regressed, 0 new, 0 stale",
            "  regressed: test_project.py::test_int8",
            "  run with --compress-update-baseline to rewrite the baseline from this run",
        ]
    )
    assert path.read_text() == text

    updated = pytester.runpytest("--compress-update-baseline")
    updated.assert_outcomes(passed=2)
    updated.stdout.fnmatch_lines(
        ["baseline .compress-baseline.json: updated from this run (2 checks)"]
    )
    metric = read_json(path)["checks"]["test_project.py::test_int8"]["compressed_metric"]
    assert metric < 0.99

    pytester.runpytest().assert_outcomes(passed=2)


def test_a_larger_compressed_size_regresses(pytester):
    make_project(
        pytester,
        """
        import pytest

        @pytest.mark.compress(quantize="int4", max_accuracy_drop=0.99)
        def test_model():
            pass
        """,
    )
    pytester.runpytest().assert_outcomes(passed=1)
    pytester.makepyfile(
        test_project="""
        import pytest

        @pytest.mark.compress(quantize="int8", max_accuracy_drop=0.99)
        def test_model():
            pass
        """
    )
    result = pytester.runpytest()
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        ["  regressed vs baseline: compressed size 2.0 kB > baseline 1.4 kB + 1% (1.4 kB)"]
    )


def test_the_tolerance_option_and_ini_key(pytester):
    make_project(pytester, CHECKS, conftest_extra=DEGRADABLE)
    pytester.runpytest().assert_outcomes(passed=2)
    (pytester.path / "degrade.txt").write_text("")
    pytester.runpytest("--compress-tolerance=1.0").assert_outcomes(passed=2)
    pytester.makeini("[pytest]\ncompress-tolerance = 1.0\n")
    pytester.runpytest().assert_outcomes(passed=2)
    pytester.runpytest("--compress-tolerance=0.001").assert_outcomes(failed=2)


def test_new_and_stale_checks_are_reported(pytester):
    make_project(pytester, CHECKS)
    pytester.runpytest().assert_outcomes(passed=2)
    pytester.makepyfile(
        test_project="""
        import pytest

        @pytest.mark.compress(quantize="int8", max_accuracy_drop=0.99)
        def test_int8_renamed():
            pass

        def test_sweep(compress):
            compress(quantize="int4")
        """
    )
    result = pytester.runpytest()
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(
        [
            "baseline .compress-baseline.json: 1 checks compared, 0 regressed, 1 new, 1 stale",
            "  new (not in the baseline): test_project.py::test_int8_renamed",
            "  stale (no check produced it): test_project.py::test_int8",
        ]
    )
    updated = pytester.runpytest("--compress-update-baseline")
    updated.stdout.fnmatch_lines(
        [
            "baseline .compress-baseline.json: updated from this run (2 checks)",
            "  added: test_project.py::test_int8_renamed",
            "  removed (stale): test_project.py::test_int8",
        ]
    )
    assert sorted(read_json(pytester.path / ".compress-baseline.json")["checks"]) == [
        "test_project.py::test_int8_renamed",
        "test_project.py::test_sweep [int4 per-channel]",
    ]


def test_a_partial_run_neither_calls_other_checks_stale_nor_drops_them(pytester):
    make_project(pytester, CHECKS)
    pytester.runpytest().assert_outcomes(passed=2)
    path = pytester.path / ".compress-baseline.json"
    before = read_json(path)["checks"]

    partial = pytester.runpytest("-k", "int8")
    partial.assert_outcomes(passed=1, deselected=1)
    partial.stdout.fnmatch_lines(
        ["baseline .compress-baseline.json: 1 checks compared, 0 regressed, 0 new, 0 stale"]
    )
    updated = pytester.runpytest("-k", "int8", "--compress-update-baseline")
    updated.stdout.fnmatch_lines(
        [
            "baseline .compress-baseline.json: updated from this run (1 checks)",
            "  kept (deselected): test_project.py::test_sweep [int4 per-channel]",
        ]
    )
    assert read_json(path)["checks"] == before


def test_the_baseline_path_option(pytester):
    make_project(pytester, CHECKS)
    pytester.runpytest("--compress-baseline=baselines/model.json").assert_outcomes(passed=2)
    assert (pytester.path / "baselines" / "model.json").exists()
    assert not (pytester.path / ".compress-baseline.json").exists()


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        ("{oops", "is not valid JSON"),
        ('{"schema_version": 7, "checks": {}}', "has the wrong schema: schema_version is 7"),
    ],
)
def test_an_invalid_baseline_file_is_a_usage_error_naming_it(pytester, content, problem):
    make_project(pytester, CHECKS)
    (pytester.path / ".compress-baseline.json").write_text(content)
    result = pytester.runpytest()
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        [f"ERROR: pytest-compress: the baseline file */.compress-baseline.json {problem}*"]
    )


# test_harsh fails its budget while harsh.txt says so (max_accuracy_drop 0.0 then 0.99)
PASS_AND_FAIL = """
import pathlib

import pytest

@pytest.mark.compress(quantize="int8", max_accuracy_drop=0.99)
def test_int8():
    pass

HARSH = 0.0 if pathlib.Path("harsh.txt").exists() else 0.99

@pytest.mark.compress(quantize="int2", prune=0.8, max_accuracy_drop=HARSH)
def test_harsh():
    pass
"""


def test_a_failed_check_is_never_recorded_as_the_reference(pytester):
    make_project(pytester, PASS_AND_FAIL)
    path = pytester.path / ".compress-baseline.json"
    harsh = pytester.path / "harsh.txt"
    harsh.write_text("")
    first = pytester.runpytest()
    first.assert_outcomes(passed=1, failed=1)
    first.stdout.fnmatch_lines(
        [
            "baseline .compress-baseline.json: no baseline yet, recorded 1 checks",
            "  not recorded (failed): test_project.py::test_harsh",
        ]
    )
    assert list(read_json(path)["checks"]) == ["test_project.py::test_int8"]

    again = pytester.runpytest()  # still failing: new, whether or not it passes
    again.stdout.fnmatch_lines(
        [
            "baseline .compress-baseline.json: 1 checks compared, 0 regressed, 1 new, 0 stale",
            "  new (not in the baseline): test_project.py::test_harsh",
        ]
    )

    harsh.unlink()  # it passes: an update records it
    pytester.runpytest("--compress-update-baseline").assert_outcomes(passed=2)
    recorded = read_json(path)["checks"]
    assert sorted(recorded) == ["test_project.py::test_harsh", "test_project.py::test_int8"]

    harsh.write_text("")  # failing again: an update keeps the entry it recorded
    updated = pytester.runpytest("--compress-update-baseline")
    updated.assert_outcomes(passed=1, failed=1)
    updated.stdout.fnmatch_lines(
        [
            "baseline .compress-baseline.json: updated from this run (1 checks)",
            "  not recorded (failed; its recorded entry stays): test_project.py::test_harsh",
        ]
    )
    assert read_json(path)["checks"] == recorded


def test_a_first_run_where_every_check_fails_records_nothing(pytester):
    make_project(
        pytester,
        PASS_AND_FAIL.replace("0.99)\ndef test_int8", "0.99, max_size_ratio=0.1)\ndef test_int8"),
    )
    (pytester.path / "harsh.txt").write_text("")
    result = pytester.runpytest()
    result.assert_outcomes(failed=2)
    result.stdout.fnmatch_lines(
        [
            "baseline .compress-baseline.json: no baseline yet; none of the 2 checks passed, "
            "nothing recorded (a failed check is no reference)"
        ]
    )
    assert not (pytester.path / ".compress-baseline.json").exists()
