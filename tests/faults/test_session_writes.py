"""Writes at the session's end that fail: an error line each, the other writes done, no crash.

A path under a regular file, a path in /proc, a directory and a missing folder stand in
for a read-only folder (the suite may run as root, where permissions do not stop writes).
A failed write the user asked for (a report, a baseline update) fails the run; one they
did not (the first run's baseline, GitHub's step summary) is said and does not.
"""

from __future__ import annotations

import os
import stat

import pytest

from tests.plugin_projects import make_project, read_json

CHECKS = """
import pytest

@pytest.mark.compress(quantize="int8", max_accuracy_drop=0.99)
def test_int8():
    pass
"""
BASELINE = ".compress-baseline.json"


@pytest.fixture
def project(pytester, monkeypatch):
    monkeypatch.delenv("GITHUB_STEP_SUMMARY", raising=False)
    make_project(pytester, CHECKS)
    (pytester.path / "file.txt").write_text("a file, not a folder\n")
    (pytester.path / "folder").mkdir()
    return pytester


def assert_no_crash(result: pytest.RunResult) -> None:
    result.assert_outcomes(passed=1)
    output = result.stdout.str() + result.stderr.str()
    assert "Traceback" not in output and "INTERNALERROR" not in output
    result.stdout.fnmatch_lines(["*= compression report =*"])


@pytest.mark.parametrize(
    ("option", "what", "path"),
    [
        ("--compress-report", "JSON report", "file.txt/report.json"),
        ("--compress-report", "JSON report", "/proc/report.json"),
        ("--compress-report", "JSON report", "folder"),
        ("--compress-markdown", "Markdown report", "file.txt/report.md"),
        ("--compress-markdown", "Markdown report", "folder"),
    ],
)
def test_an_unwritable_report_path_is_an_error_line_and_the_baseline_is_still_recorded(
    project, option, what, path
):
    result = project.runpytest(f"{option}={path}")
    assert_no_crash(result)
    result.stdout.fnmatch_lines(
        [f"pytest-compress: could not write the {what} {path}: * (the run fails for it)"]
    )
    assert result.ret == pytest.ExitCode.TESTS_FAILED  # the report asked for is missing
    result.stdout.fnmatch_lines(["baseline .compress-baseline.json: no baseline yet, recorded 1*"])
    assert list(read_json(project.path / BASELINE)["checks"]) == ["test_project.py::test_int8"]


def test_a_failed_report_does_not_skip_the_other_report(project):
    result = project.runpytest(
        "--compress-report=file.txt/report.json", "--compress-markdown=report.md"
    )
    assert_no_crash(result)
    assert (project.path / "report.md").exists()
    assert result.ret == pytest.ExitCode.TESTS_FAILED


def test_a_step_summary_in_a_missing_folder_is_said_and_does_not_fail_the_run(project, monkeypatch):
    summary = project.path / "missing" / "summary.md"
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    result = project.runpytest("--compress-markdown=report.md")
    assert_no_crash(result)
    result.stdout.fnmatch_lines(
        [
            "pytest-compress: could not write the step summary ($GITHUB_STEP_SUMMARY) "
            "missing/summary.md: * (not requested: the run goes on)"
        ]
    )
    assert result.ret == pytest.ExitCode.OK
    assert (project.path / "report.md").exists()


def test_a_first_run_that_cannot_record_the_baseline_says_so_and_passes(project):
    result = project.runpytest("--compress-baseline=file.txt/baseline.json")
    assert_no_crash(result)
    result.stdout.fnmatch_lines(
        ["pytest-compress: could not write the baseline *file.txt/baseline.json: * (not requested*"]
    )
    assert result.ret == pytest.ExitCode.OK


def test_an_update_that_cannot_write_the_baseline_fails_after_writing_the_report(project):
    result = project.runpytest(
        "--compress-baseline=file.txt/baseline.json",
        "--compress-update-baseline",
        "--compress-report=report.json",
        "--compress-no-summary",
    )
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(
        ["pytest-compress: could not write the baseline *: * (the run fails for it)"]
    )
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    assert read_json(project.path / "report.json")["checks"]


def test_a_run_that_only_compares_writes_nothing(project):
    project.runpytest("-p", "no:cacheprovider").assert_outcomes(passed=1)
    before = {path: path.stat().st_mtime_ns for path in project.path.rglob("*")}
    project.runpytest("-p", "no:cacheprovider").assert_outcomes(passed=1)
    after = {path: path.stat().st_mtime_ns for path in project.path.rglob("*")}
    assert after == before  # no lock file, no temporary file, no rewrite


@pytest.mark.skipif(
    not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root writes to read-only folders"
)
def test_a_read_only_rootdir_first_run_passes_and_says_the_baseline_was_not_recorded(project):
    mode = project.path.stat().st_mode
    project.path.chmod(stat.S_IRUSR | stat.S_IXUSR)
    try:
        result = project.runpytest("-p", "no:cacheprovider")
    finally:
        project.path.chmod(mode)
    assert_no_crash(result)
    result.stdout.fnmatch_lines(["pytest-compress: could not write the baseline *"])
    assert result.ret == pytest.ExitCode.OK
