"""Faults the stored baseline survives: nothing lost, nothing stale that is not, standard JSON.

Each test names the fault. The project has three marked tests in one file; files named
``interrupt.txt``, ``fail.txt`` or ``crash.txt`` make the second one raise
KeyboardInterrupt, fail, or kill its process (an xdist worker) after its check ran.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from pytest_compress import strict_json
from pytest_compress.files import locked
from pytest_compress.plugin.baseline import baseline_entry, write_baseline
from tests.plugin_projects import CONFTEST, make_project, read_json, run_subprocess

BASELINE = ".compress-baseline.json"
THREE = """
import os
import pathlib

import pytest

@pytest.mark.compress(quantize="int8", max_accuracy_drop=0.99)
def test_1():
    pass

@pytest.mark.compress(quantize="int4", max_accuracy_drop=0.99)
def test_2():
    if pathlib.Path("interrupt.txt").exists():
        raise KeyboardInterrupt
    if pathlib.Path("crash.txt").exists():
        os._exit(1)
    assert not pathlib.Path("fail.txt").exists()

@pytest.mark.compress(quantize="int8", max_accuracy_drop=0.99)
def test_3():
    pass
"""
ALL = ["test_project.py::test_1", "test_project.py::test_2", "test_project.py::test_3"]


@pytest.fixture(autouse=True)
def _no_step_summary(monkeypatch):
    monkeypatch.delenv("GITHUB_STEP_SUMMARY", raising=False)


def checks(path: Path) -> list[str]:
    return sorted(read_json(path / BASELINE)["checks"])


def strict_loads(text: str) -> object:
    """json.loads as JavaScript's JSON.parse: NaN, Infinity and -Infinity are errors."""

    def refuse(token: str) -> object:
        raise ValueError(f"not standard JSON: {token}")

    return json.loads(text, parse_constant=refuse)


@pytest.mark.parametrize(
    ("trigger", "args", "reason"),
    [
        ("interrupt.txt", [], "not run: the session was interrupted"),
        ("fail.txt", ["-x"], "not run: the session stopped early (stopping after 1 failures)"),
    ],
    ids=["ctrl-c", "-x"],
)
def test_an_update_stopped_midway_keeps_the_entries_of_tests_it_did_not_reach(
    pytester, trigger, args, reason
):
    make_project(pytester, THREE)
    pytester.runpytest().assert_outcomes(passed=3)
    (pytester.path / trigger).write_text("")
    stopped = pytester.runpytest(
        "-p", "no:cacheprovider", "--compress-update-baseline", *args, no_reraise_ctrlc=True
    )
    assert stopped.ret in (pytest.ExitCode.INTERRUPTED, pytest.ExitCode.TESTS_FAILED)
    stopped.stdout.fnmatch_lines(
        [
            "baseline .compress-baseline.json: updated from this run (2 checks)",
            f"  kept ({reason}): test_project.py::test_3",
        ]
    )
    stopped.stdout.no_fnmatch_line("*removed (stale)*")
    assert checks(pytester.path) == ALL


def test_a_crashed_xdist_worker_loses_neither_its_checks_nor_their_baseline_entries(pytester):
    # test_1 passes, then test_2 kills its worker (after its check ran, at setup) and
    # test_3 never runs; test_b.py runs on the other worker. No worker restarts.
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(
        test_a=THREE,
        test_b='import pytest\n\n@pytest.mark.compress(quantize="int8", max_accuracy_drop=0.99)\n'
        "def test_4():\n    pass\n",
    )
    # the baseline, recorded in-process (a serial run records the same check ids)
    pytester.runpytest("-p", "no:cacheprovider").assert_outcomes(passed=4)
    xdist = ("-n", "2", "--dist", "loadfile", "--max-worker-restart=0")
    (pytester.path / "crash.txt").write_text("")
    crashed = run_subprocess(
        pytester.path, *xdist, "--compress-update-baseline", "--compress-report=report.json"
    )
    crashed.assert_outcomes(passed=2, failed=1)
    crashed.stdout.fnmatch_lines(["*worker 'gw*' crashed while running*test_2*"])
    # the checks the crashed worker made still reach the reports
    reported = [entry["check"] for entry in read_json(pytester.path / "report.json")["checks"]]
    assert reported == ["test_a.py::test_1", "test_a.py::test_2", "test_b.py::test_4"]
    crashed.stdout.fnmatch_lines(["test_a.py::test_1 *ok*", "  kept (not run*): test_a.py::test_3"])
    crashed.stdout.no_fnmatch_line("*removed (stale)*")
    assert checks(pytester.path) == sorted([*reported, "test_a.py::test_3"])


@pytest.mark.parametrize(
    ("args", "reason"),
    [
        (["-k", "test_1"], "deselected"),
        (["--deselect", "test_project.py::test_2"], "deselected"),
        (["test_project.py::test_1"], "its file was not part of this run"),
        (["--lf"], "not collected: --lf collects only the last failures"),
    ],
    ids=["-k", "--deselect", "node-id", "--lf"],
)
def test_a_partial_update_keeps_what_it_deselected(pytester, args, reason):
    make_project(pytester, THREE)
    pytester.runpytest().assert_outcomes(passed=3)
    before = read_json(pytester.path / BASELINE)["checks"]
    if args == ["--lf"]:  # the last run failed test_2 only
        (pytester.path / "fail.txt").write_text("")
        pytester.runpytest().assert_outcomes(passed=2, failed=1)
        (pytester.path / "fail.txt").unlink()
    updated = pytester.runpytest("--compress-update-baseline", *args)
    assert updated.ret == pytest.ExitCode.OK
    updated.stdout.fnmatch_lines([f"  kept ({reason}): *"])
    updated.stdout.no_fnmatch_line("*removed (stale)*")
    assert read_json(pytester.path / BASELINE)["checks"] == before


def test_a_test_gone_from_a_complete_collection_is_still_stale(pytester):
    make_project(pytester, THREE)
    pytester.runpytest().assert_outcomes(passed=3)
    pytester.makepyfile(test_project=THREE.replace("def test_3", "def test_3_renamed"))
    updated = pytester.runpytest("--compress-update-baseline")
    updated.stdout.fnmatch_lines(["  removed (stale): test_project.py::test_3"])
    assert "test_project.py::test_3" not in checks(pytester.path)


def test_the_checks_of_a_deleted_test_file_are_stale_even_in_a_partial_run(pytester):
    make_project(pytester, THREE)
    pytester.makepyfile(test_other=THREE)
    pytester.runpytest().assert_outcomes(passed=6)
    (pytester.path / "test_other.py").unlink()
    # a node id argument makes test_project.py's collection partial: its entries stay, but
    # test_other.py is gone from disk, so no collection can hold its tests any more
    updated = pytester.runpytest("test_project.py::test_1", "--compress-update-baseline")
    updated.stdout.fnmatch_lines(["  removed (stale): test_other.py::test_1"])
    recorded = set(checks(pytester.path))
    assert not any(check.startswith("test_other.py") for check in recorded)
    assert {"test_project.py::test_2", "test_project.py::test_3"} <= recorded


SESSION_END = """
import pathlib
import time

@pytest.hookimpl(wrapper=True)
def pytest_sessionfinish(session):
    # A barrier before the plugin writes: both runs have read the baseline and measured
    # their checks before either writes.
    pathlib.Path("reached-" + session.items[0].path.stem).touch()
    deadline = time.monotonic() + 240
    while len(list(pathlib.Path().glob("reached-*"))) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    return (yield)
"""


def _pytest_process(path: Path, *args: str) -> subprocess.Popen[str]:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    environment.pop("GITHUB_STEP_SUMMARY", None)
    environment["OMP_NUM_THREADS"] = "1"
    command = [
        sys.executable,
        "-m",
        "pytest",
        "-p",
        "no:hypothesispytest",
        "-p",
        "no:cacheprovider",
    ]
    return subprocess.Popen(
        [*command, *args],
        cwd=path,
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def test_concurrent_updates_on_different_files_lose_nothing(pytester):
    # Deterministic by design: a barrier in the conftest lets neither run write before
    # both read the (empty) baseline, so each writes from a stale view, the case where one
    # run's entries used to vanish; and this test holds the baseline's lock meanwhile, so
    # both then wait for it together.
    pytester.makeconftest(CONFTEST + textwrap.dedent(SESSION_END))
    marked = '\nimport pytest\n\n@pytest.mark.compress(quantize="int8", max_accuracy_drop=0.99)\n'
    pytester.makepyfile(test_a=marked + "def test_a():\n    pass\n")
    pytester.makepyfile(test_b=marked + "def test_b():\n    pass\n")
    baseline = pytester.path / BASELINE
    for _trial in range(2):
        baseline.write_text('{"schema_version": 1, "checks": {}}\n')
        for reached in pytester.path.glob("reached-*"):
            reached.unlink()
        with locked(baseline):
            runs = [
                _pytest_process(pytester.path, name, "--compress-update-baseline")
                for name in ("test_a.py", "test_b.py")
            ]
            deadline = time.monotonic() + 240
            while len(list(pytester.path.glob("reached-*"))) < 2:
                assert all(run.poll() is None for run in runs), [r.communicate()[0] for r in runs]
                assert time.monotonic() < deadline
                time.sleep(0.1)
            time.sleep(0.2)
        outputs = [run.communicate(timeout=240)[0] for run in runs]
        assert [run.returncode for run in runs] == [0, 0], outputs
        assert checks(pytester.path) == ["test_a.py::test_a", "test_b.py::test_b"], outputs
        assert not list(pytester.path.glob(".*.lock"))


def test_a_killed_writes_temporary_file_is_removed_by_the_next_write(pytester):
    make_project(pytester, THREE)
    pytester.runpytest().assert_outcomes(passed=3)
    killed_write = textwrap.dedent(
        """
        import os, sys
        from pytest_compress.files import write_atomically

        def parts():
            yield b'{"schema_version": 1, "che'
            os._exit(9)  # killed midway: the temporary file stays

        write_atomically(sys.argv[1], parts())
        """
    )
    for target in (BASELINE, "report.json"):
        subprocess.run([sys.executable, "-c", killed_write, target], cwd=pytester.path, check=False)
    left = sorted(path.name for path in pytester.path.glob(".*.tmp"))
    assert len(left) == 2, left
    report_leftover = next(pytester.path.glob(".report.json.*.tmp"))
    old = time.time() - 2 * 3600  # another run's live write is never that old
    os.utime(report_leftover, (old, old))
    pytester.runpytest("--compress-update-baseline", "--compress-report=report.json")
    assert not list(pytester.path.glob(".*.tmp"))
    assert checks(pytester.path) == ALL


NAN_METRIC = """
from pytest_compress.engine.measure import model_metric

@pytest.fixture(scope="session")
def compress_metric():
    # finite for the float model (measured first), NaN for every compressed copy
    calls = []

    def score(model, data):
        calls.append(model)
        return 0.5 if len(calls) == 1 else float("nan")

    return model_metric(score)
"""


def test_a_nan_metric_is_written_as_null_with_its_reason_in_standard_json(pytester):
    make_project(
        pytester,
        '\nimport pytest\n\n@pytest.mark.compress(quantize="int8", max_size_ratio=1.0)\n'
        "def test_nan():\n    pass\n",
        conftest_extra=NAN_METRIC,
    )
    # a NaN compressed metric fails its check: the first run records no baseline (a failed
    # check is no reference), so the entry an earlier recording made is written here
    pytester.runpytest("--compress-report=report.json").assert_outcomes(failed=1)
    assert not (pytester.path / BASELINE).exists()
    report = strict_loads((pytester.path / "report.json").read_text())
    entry = strict_json.decoded(report["checks"][0])
    write_baseline(pytester.path / BASELINE, {entry["check"]: baseline_entry(entry)})
    baseline = strict_loads((pytester.path / BASELINE).read_text())
    for entry in (report["checks"][0], baseline["checks"]["test_project.py::test_nan"]):
        assert entry["compressed_metric"] is None
        assert entry["non_finite"]["compressed_metric"] == "NaN"
    # and the recorded NaN reads back: the next run loads the baseline and compares
    second = pytester.runpytest("-p", "no:cacheprovider")
    second.assert_outcomes(failed=1)
    second.stdout.fnmatch_lines(["*the compressed model produced NaN*"])


@pytest.mark.parametrize("value", ["NaN", "Infinity", "-Infinity", "1e999"])
def test_a_hand_edited_non_finite_baseline_value_is_a_usage_error(pytester, value):
    make_project(pytester, THREE)
    pytester.runpytest().assert_outcomes(passed=3)
    path = pytester.path / BASELINE
    document = read_json(path)
    document["checks"]["test_project.py::test_1"]["compressed_metric"] = math.pi
    path.write_text(json.dumps(document, indent=2).replace(str(math.pi), value))
    result = pytester.runpytest()
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        [
            f"ERROR: pytest-compress: the baseline file */{BASELINE} "
            f"holds a non-finite number: {value}*"
        ]
    )


@pytest.mark.parametrize(
    "content", ['{"schema_version": 7, "checks": {}}', "{oops"], ids=["schema", "json"]
)
def test_the_advice_of_an_unusable_baseline_works(pytester, content):
    make_project(pytester, THREE)
    (pytester.path / BASELINE).write_text(content)
    refused = pytester.runpytest()
    assert refused.ret == pytest.ExitCode.USAGE_ERROR
    refused.stderr.fnmatch_lines(["*run with --compress-update-baseline to rewrite it*"])
    rewritten = pytester.runpytest("--compress-update-baseline")
    rewritten.assert_outcomes(passed=3)
    rewritten.stdout.fnmatch_lines(
        ["baseline .compress-baseline.json: the file could not be used; rewritten from this run *"]
    )
    assert checks(pytester.path) == ALL
    pytester.runpytest().assert_outcomes(passed=3)
