"""How far this run reached each test: what the absence of a recorded check means.

A recorded check this run did not produce is stale only when the run proves the check
is gone: its test ran to the end (passed) without making it, its test no longer exists
in a complete collection of its file, or its file was deleted. Any other absence keeps
the entry, for a reason the terminal names: the test was deselected, skipped, failed
before making the check, was not run because the session stopped (Ctrl-C, ``-x``), or its
xdist worker crashed; or its file was not collected completely (not part of the run, a
collection error, a node id argument).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pytest

NOT_IN_RUN = "its file was not part of this run"
# The reasons listed one check per line; NOT_IN_RUN (every partial run) only counts.
DESELECTED = "deselected"
SKIPPED = "skipped"
FAILED = "failed before making it"
CRASHED = "its xdist worker crashed"
NOT_RUN = "not run"
LAST_FAILED = "not collected: --lf collects only the last failures"


def file_of(test: str) -> str:
    return test.split("::", 1)[0]


@dataclass
class Reach:
    """The tests this run collected and how far each went (under xdist: all workers')."""

    collected: set[str] = field(default_factory=set)  # selected for running
    deselected: set[str] = field(default_factory=set)
    passed: set[str] = field(default_factory=set)  # their call phase passed
    outcomes: dict[str, str] = field(default_factory=dict)  # otherwise: why not
    incomplete_files: set[str] = field(default_factory=set)
    # False when no xdist worker sent its deselected tests (all crashed): then a test
    # missing from the collection may merely have been deselected
    deselection_known: bool = True
    stopped: str | None = None  # why the session stopped before running everything
    # why no file was collected completely (--lf leaves out passed tests without
    # deselecting them), or None
    filtered: str | None = None
    root: Path | None = None  # the rootdir node ids are relative to

    def record(self, report: pytest.TestReport) -> None:
        """Note one test report (the controller sees every worker's)."""
        test = report.nodeid
        if report.when == "call" and report.passed:
            self.passed.add(test)
        elif report.when == "???":  # xdist's report of a test whose worker crashed
            self.outcomes[test] = CRASHED
        elif report.skipped and test not in self.outcomes:
            self.outcomes[test] = SKIPPED
        elif report.failed and test not in self.passed:
            self.outcomes[test] = FAILED

    def record_collection(self, report: pytest.CollectReport) -> None:
        """A collector that failed or was skipped: its file was not collected completely."""
        if not report.passed:
            self.incomplete_files.add(file_of(report.nodeid))

    def finish(self, session: pytest.Session, exitstatus: int | pytest.ExitCode) -> None:
        """What only the end of the session tells: the items, node id arguments, a stop."""
        self.collected.update(item.nodeid for item in session.items)
        config = session.config
        self.root = config.rootpath
        if config.getoption("lf", False):
            self.filtered = LAST_FAILED
        for argument in config.args:
            if "::" in argument:  # `pytest a.py::test_one` collects only part of a.py
                self.incomplete_files.add(_node_file(config, argument))
        if exitstatus == pytest.ExitCode.INTERRUPTED:
            self.stopped = "the session was interrupted"
        elif session.shouldfail or session.shouldstop:
            self.stopped = f"the session stopped early ({session.shouldfail or session.shouldstop})"

    def why_kept(self, test: str) -> str | None:
        """Why a recorded check of node id ``test`` that this run did not make is kept;
        None when the run proves it stale."""
        if test in self.passed:
            return None  # its body ran to the end and no longer makes the check
        if test in self.deselected:
            return DESELECTED
        if test in self.outcomes:
            return self.outcomes[test]
        if test in self.collected:
            return f"{NOT_RUN}: {self.stopped}" if self.stopped else NOT_RUN
        if self.filtered is not None:
            return self.filtered
        test_file = file_of(test)
        files = {file_of(node) for node in self.collected | self.deselected}
        complete = test_file in files and test_file not in self.incomplete_files
        if complete and self.deselection_known:
            return None  # the test no longer exists in a complete collection of its file
        if self.deleted(test_file):
            return None  # its file is gone: no collection can hold the test any more
        return NOT_IN_RUN

    def deleted(self, test_file: str) -> bool:
        """Whether ``test_file`` no longer exists, in a folder that still does (a file removed
        or renamed; a folder that is missing too suggests node ids of another rootdir)."""
        if self.root is None or not test_file.endswith(".py"):
            return False
        path = self.root / test_file
        return not path.exists() and path.parent.is_dir()


def _node_file(config: pytest.Config, argument: str) -> str:
    """The rootdir-relative file of a node id argument, as node ids spell it."""
    path = Path(config.invocation_params.dir, argument.split("::", 1)[0]).resolve()
    try:
        return path.relative_to(config.rootpath).as_posix()
    except ValueError:
        return argument.split("::", 1)[0]
