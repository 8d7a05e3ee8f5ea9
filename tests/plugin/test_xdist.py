"""pytest-xdist: workers send their checks to the controller, which reports each once.

These run pytest in subprocesses (xdist needs real worker processes), so they are the
slowest plugin tests; one comparison covers the terminal, JSON, Markdown and baseline.
"""

from __future__ import annotations

import re

import pytest

from tests.plugin_projects import make_project, read_json

pytest.importorskip("xdist")

CHECKS = """
import pytest

@pytest.mark.compress(quantize="int8", max_accuracy_drop=0.01)
def test_int8():
    pass

@pytest.mark.compress(quantize="int4", prune=0.5, max_accuracy_drop=1.0, min_sparsity=0.5)
def test_int4_pruned():
    pass

@pytest.mark.compress(quantize="int2", max_accuracy_drop=0.001)
def test_int2_fails():
    pass

@pytest.mark.parametrize("bits", [8, 6])
def test_sweep(compress, bits):
    compress(quantize=f"int{bits}")

def test_plain():
    pass
"""


@pytest.fixture(autouse=True)
def _no_step_summary(monkeypatch):
    monkeypatch.delenv("GITHUB_STEP_SUMMARY", raising=False)


def _run(pytester: pytest.Pytester, name: str, *args: str) -> pytest.RunResult:
    return pytester.runpytest_subprocess(
        "-p",
        "no:cacheprovider",
        "-v",
        f"--compress-report={name}.json",
        f"--compress-markdown={name}.md",
        f"--compress-baseline={name}-baseline.json",
        "--compress-update-baseline",
        *args,
    )


def _report_rows(result: pytest.RunResult) -> list[str]:
    lines = result.stdout.lines
    start = next(i for i, line in enumerate(lines) if "compression report" in line)
    return [line for line in lines[start + 1 :] if line.startswith("test")]


def _without_timings(report: dict) -> dict:
    for check in report["checks"]:
        del check["seconds"], check["timings"]
    return report


def test_an_xdist_run_reports_exactly_what_a_serial_run_does(pytester):
    make_project(pytester, CHECKS)
    serial = _run(pytester, "serial")
    parallel = _run(pytester, "xdist", "-n", "2")
    for result in (serial, parallel):
        result.assert_outcomes(passed=5, failed=1)

    # both workers ran checks, so the merge really had two sources
    checks_ran_on = r"\[(gw\d)\] \[ *\d+%\] (?:PASSED|FAILED) test_project.py::test_(?!plain)"
    workers = set(re.findall(checks_ran_on, parallel.stdout.str()))
    assert workers == {"gw0", "gw1"}

    rows = _report_rows(serial)
    assert len(rows) == 1 + 5  # the header and each check once
    assert _report_rows(parallel) == rows
    serial_report = _without_timings(read_json(pytester.path / "serial.json"))
    parallel_report = _without_timings(read_json(pytester.path / "xdist.json"))
    assert [c["check"] for c in parallel_report["checks"]] == [
        "test_project.py::test_int2_fails",
        "test_project.py::test_int4_pruned",
        "test_project.py::test_int8",
        "test_project.py::test_sweep[6] [int6 per-channel]",
        "test_project.py::test_sweep[8] [int8 per-channel]",
    ]
    assert parallel_report == serial_report
    for suffix in (".md", "-baseline.json"):
        xdist_text = (pytester.path / f"xdist{suffix}").read_text()
        assert xdist_text == (pytester.path / f"serial{suffix}").read_text()
    parallel.stdout.fnmatch_lines(
        ["baseline xdist-baseline.json: no baseline yet, recorded 5 checks"]
    )


def test_under_xdist_the_workers_compare_with_the_baseline_and_flag_bad_markers(pytester):
    make_project(pytester, CHECKS)
    _run(pytester, "record", "-n", "2").assert_outcomes(passed=5, failed=1)
    pytester.makepyfile(
        test_bad="""
        import pytest

        @pytest.mark.compress(quantize="int8", max_acuracy_drop=0.01)
        def test_bad():
            pass
        """
    )
    result = pytester.runpytest_subprocess(
        "-p", "no:cacheprovider", "-n", "2", "--compress-baseline=record-baseline.json"
    )
    result.assert_outcomes(passed=5, failed=1, errors=1)
    result.stdout.fnmatch_lines(
        [
            # the controller cannot stop the session for a worker's usage error, so the
            # test with the bad marker errors, with the usage message
            "invalid @pytest.mark.compress (pytest-compress): test_bad.py::test_bad: "
            "max_acuracy_drop: unknown argument (did you mean max_accuracy_drop?)*",
            "baseline record-baseline.json: 5 checks compared, 0 regressed, 0 new, 0 stale",
        ]
    )
