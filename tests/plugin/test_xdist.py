"""pytest-xdist: workers send their checks to the controller, which reports each once.

xdist needs real worker processes, so these run pytest in subprocesses: the slowest
plugin tests. The module shares three sessions of one project between its tests:

1. ``-n 2`` with ``--compress-no-cache``, recording a baseline: every check is measured
   (a check whose recipe another already measured, ``test_sweep[8]`` and ``test_int8``,
   would otherwise come from the cache), and the workers still store the results;
2. serially, without pytest's cache: the same checks measured once more, to compare
   with 1 (terminal, JSON, Markdown and baseline);
3. ``-n 2`` again, with a test file holding a bad marker added, gating on the
   baseline of 1: every worker serves its checks from what the workers of 1 stored.
"""

from __future__ import annotations

import re
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.plugin_projects import CONFTEST, read_json, run_subprocess

pytest.importorskip("xdist")

CHECKS = """
import pytest

@pytest.mark.compress(quantize="int8", max_accuracy_drop=0.01)
def test_int8():
    pass

@pytest.mark.compress(quantize="int4", prune=0.5, max_accuracy_drop=0.99, min_sparsity=0.5)
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

# Each session writes the forward passes its process ran, per worker.
COUNT_FORWARDS = """

import json
import pathlib


def pytest_sessionfinish(session):
    worker = getattr(session.config, "workerinput", {}).get("workerid", "main")
    pathlib.Path(f"forwards-{worker}.json").write_text(json.dumps(sum(CALLS.values())))
"""

BAD_MARKER = """
import pytest

@pytest.mark.compress(quantize="int8", max_acuracy_drop=0.01)
def test_bad():
    pass
"""


@dataclass
class Sessions:
    path: Path
    parallel: pytest.RunResult
    serial: pytest.RunResult
    rerun: pytest.RunResult
    rerun_forwards: dict[str, int]


def _reports(name: str) -> tuple[str, ...]:
    return (
        f"--compress-report={name}.json",
        f"--compress-markdown={name}.md",
        f"--compress-baseline={name}-baseline.json",
        "--compress-update-baseline",
    )


@pytest.fixture(scope="module")
def sessions(tmp_path_factory) -> Sessions:
    path = tmp_path_factory.mktemp("xdist")
    (path / "conftest.py").write_text(CONFTEST + COUNT_FORWARDS)
    (path / "test_project.py").write_text(textwrap.dedent(CHECKS))
    parallel = run_subprocess(path, "-v", "-n", "2", "--compress-no-cache", *_reports("xdist"))
    # without pytest's cache: session 3 reads only what the xdist workers of 1 wrote
    serial = run_subprocess(
        path, "-v", "-p", "no:xdist", "-p", "no:cacheprovider", *_reports("serial")
    )
    for stale in path.glob("forwards-*.json"):
        stale.unlink()
    (path / "test_bad.py").write_text(textwrap.dedent(BAD_MARKER))
    # no sensitivity: the failing check's layer ranking is a diagnosis, always measured
    rerun = run_subprocess(
        path, "-n", "2", "--compress-no-sensitivity", "--compress-baseline=xdist-baseline.json"
    )
    forwards = {p.stem.split("-", 1)[1]: read_json(p) for p in path.glob("forwards-gw*.json")}
    return Sessions(path, parallel, serial, rerun, forwards)


def _report_rows(result: pytest.RunResult) -> list[str]:
    lines = result.stdout.lines
    start = next(i for i, line in enumerate(lines) if "compression report" in line)
    return [line for line in lines[start + 1 :] if line.startswith("test")]


def _without_timings(report: dict) -> dict:
    for check in report["checks"]:
        del check["seconds"], check["timings"]
    return report


def test_an_xdist_run_reports_exactly_what_a_serial_run_does(sessions):
    for result in (sessions.serial, sessions.parallel):
        result.assert_outcomes(passed=5, failed=1)

    # both workers ran checks, so the merge really had two sources
    checks_ran_on = r"\[(gw\d)\] \[ *\d+%\] (?:PASSED|FAILED) test_project.py::test_(?!plain)"
    workers = set(re.findall(checks_ran_on, sessions.parallel.stdout.str()))
    assert workers == {"gw0", "gw1"}

    rows = _report_rows(sessions.serial)
    assert len(rows) == 1 + 5  # the header and each check once
    assert _report_rows(sessions.parallel) == rows
    serial_report = _without_timings(read_json(sessions.path / "serial.json"))
    parallel_report = _without_timings(read_json(sessions.path / "xdist.json"))
    assert [c["check"] for c in parallel_report["checks"]] == [
        "test_project.py::test_int2_fails",
        "test_project.py::test_int4_pruned",
        "test_project.py::test_int8",
        "test_project.py::test_sweep[6] [int6 per-channel]",
        "test_project.py::test_sweep[8] [int8 per-channel]",
    ]
    assert not any(check["cached"] for check in parallel_report["checks"])
    assert parallel_report == serial_report
    for suffix in (".md", "-baseline.json"):
        xdist_text = (sessions.path / f"xdist{suffix}").read_text()
        assert xdist_text == (sessions.path / f"serial{suffix}").read_text()
    sessions.parallel.stdout.fnmatch_lines(
        [
            "baseline xdist-baseline.json: no baseline yet, recorded 4 checks",
            "  not recorded (failed): test_project.py::test_int2_fails",  # no reference
        ]
    )


def test_under_xdist_the_workers_compare_with_the_baseline_and_flag_bad_markers(sessions):
    sessions.rerun.assert_outcomes(passed=5, failed=1, errors=1)
    sessions.rerun.stdout.fnmatch_lines(
        [
            # the controller cannot stop the session for a worker's usage error, so the
            # test with the bad marker errors, with the usage message
            "invalid @pytest.mark.compress (pytest-compress): test_bad.py::test_bad: "
            "max_acuracy_drop: unknown argument (did you mean max_accuracy_drop?)*",
            "baseline xdist-baseline.json: 4 checks compared, 0 regressed, 1 new, 0 stale",
        ]
    )


def test_under_xdist_every_worker_uses_the_cache(sessions):
    cached = [line.split()[0] for line in sessions.rerun.stdout.lines if line.endswith("(cached)")]
    assert len(cached) == 5
    sessions.rerun.stdout.fnmatch_lines(["cache: 5 of 5 checks reused from an earlier run*"])
    # both workers ran, and neither ran a forward pass: the float model's numbers and
    # every check's came from the cache the first xdist session wrote
    assert sessions.rerun_forwards == {"gw0": 0, "gw1": 0}
