"""The plugin's state for one pytest session, and the hooks that act on the whole session.

``CompressSession`` is registered as a plugin object by ``pytest_configure``. It holds
the options, the baseline, the entries of every check run here, and the session's
``CheckRunner`` (pytest-free: the float measurements, the data read once, the
fingerprints and the persistent cache). The runner imports torch, so it is made by the
first check, through ``_checks()``: the one place the plugin imports lazily, so that
``pytest --help`` does not pay for torch. On an xdist worker the entries go to the
controller through ``config.workeroutput``; the controller (or a serial run) writes the
reports and the baseline once, at the end.
"""

from __future__ import annotations

import importlib
import json
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

import pytest

from ..checks.cache import ResultCache
from ..checks.request import CheckInputs, Recovery
from ..checks.result import CompressionResult
from .baseline import Baseline, BaselineError, baseline_entry, merge_into_file
from .markers import (
    DEFAULT_CALIBRATION_FIXTURE,
    DEFAULT_DATA_FIXTURE,
    CheckRequest,
    Fixtures,
)
from .options import Options, check_device
from .reach import Reach
from .report import (
    append_text,
    baseline_lines,
    cache_lines,
    dominated_lines,
    markdown_table,
    sorted_entries,
    terminal_table,
    write_json_report,
    write_text,
)

if TYPE_CHECKING:
    from ..checks.runner import CheckRunner

WORKEROUTPUT_KEY = "pytest_compress_entries"
REPORT_KEY = "pytest_compress_entries"  # a worker's test report's attribute: its new entries
_DEFAULT_FIXTURES = Fixtures()


def _checks() -> ModuleType:
    """The check runner's module, imported on first use: it imports torch.

    Through ``sys.modules`` rather than the package's attribute, which an earlier
    in-process pytest run (pytester) may have left pointing at a discarded copy.
    """
    return importlib.import_module("pytest_compress.checks.runner")


class CompressSession:
    """Options, caches and results of one session; registered as a plugin object."""

    def __init__(self, config: pytest.Config, options: Options) -> None:
        self.config = config
        self.options = options
        self.results: ResultCache | None = None  # set at session start
        # the float models exported for ONNX Runtime, kept across runs (pytest's cache)
        self.exports: Path | None = None
        self._runner: CheckRunner | None = None
        self.entries: list[dict[str, Any]] = []
        self.baseline: Baseline | None = None
        self.notes: list[str] = []
        # what the reports say about data and the cache, by topic (workers' notes merge)
        self.input_notes: dict[str, str] = {}
        # which tests this run reached, to tell a stale baseline entry from one not run
        self.reach = Reach()
        self.is_worker = hasattr(config, "workerinput")
        self._sent = 0  # a worker's entries already sent with a test report
        self._workers_reported = self._workers_lost = 0  # xdist controller
        # the end of the session: writes that failed, and whether one the user asked for did
        self.write_errors: list[str] = []
        self.failed_request = False
        self.unreadable_baseline: str | None = None

    # --- running checks ------------------------------------------------------------

    def run(
        self,
        request: pytest.FixtureRequest,
        check: CheckRequest,
        *,
        check_id: str,
    ) -> CompressionResult:
        """Resolve the fixtures (or the objects a ``compress`` call gave), run the check,
        apply the baseline gate and record it."""
        inputs = resolve_inputs(request, check)
        started = time.time()
        result = self.runner.run(check.check, inputs)
        finished = time.time()
        status = None
        if self.baseline is not None and not self.options.update_baseline:
            gate = self.baseline.compare(
                check_id, result, self.options.tolerance, self.options.latency_tolerance
            )
            if gate is None:
                status = "new"
            else:
                result = result.with_checks(gate)
                status = "regressed" if result.regressed else "ok"
        entry = {"check": check_id, "test": request.node.nodeid, **result.to_dict()}
        # The wall-clock span of the plugin's work on this check, from the moment its
        # fixtures were resolved: what benchmarks/bench_overhead.py adds up.
        entry["timings"].update(started=started, finished=finished)
        self.entries.append({**entry, "baseline": status})
        request.node.user_properties.extend(junit_properties(check_id, result))
        return result

    @property
    def runner(self) -> CheckRunner:
        """The session's ``CheckRunner``, made by the first check."""
        if self._runner is None:
            options = self.options
            self._runner = _checks().CheckRunner(
                device=options.device,
                cache_mb=options.cache_mb,
                sensitivity_limit=options.sensitivity_layers if options.sensitivity else None,
                results=self.results,
                notes=self.input_notes,  # written there, sent to the controller by workers
                latency_seconds=options.latency_seconds,
                threads=options.threads,
                exports=self.exports if options.cache else None,
                verify=options.verify,
                sensitivity_seconds=options.sensitivity_seconds,
                low_memory=options.low_memory,
                low_memory_share=options.low_memory_share,
            )
        return self._runner

    # --- session hooks -------------------------------------------------------------

    def pytest_sessionstart(self, session: pytest.Session) -> None:
        # Here rather than in pytest_configure, so that `pytest --help` works whatever
        # the options say.
        index = check_device(self.options.device)
        if index is not None:  # a CUDA device: whether it exists here needs torch
            problem = _checks().missing_device(self.options.device, index)
            if problem is not None:
                raise pytest.UsageError(problem)
        store = getattr(self.config, "cache", None)  # None under -p no:cacheprovider
        if store is not None:
            # --compress-no-cache measures everything, and stores the fresh numbers
            self.results = ResultCache(store, read=self.options.cache)
            self.exports = Path(store.mkdir("pytest-compress-exports"))
        try:
            self.baseline = Baseline.load(self.options.baseline)
        except BaselineError as error:
            if not self.options.update_baseline:
                raise pytest.UsageError(f"pytest-compress: {error}") from None
            # the advice of the error: an update rewrites the file from this run
            self.unreadable_baseline = str(error)

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtestloop(self, session: pytest.Session) -> None:
        """Load the check runner's modules (the engine and what it imports) before the
        first test that runs a check, not inside it: 0.14 s once per session that the
        first check's timings would otherwise carry."""
        uses = ("compression", "compress")
        if not self.options.disable and any(
            name in uses for item in session.items for name in getattr(item, "fixturenames", ())
        ):
            _checks()

    def pytest_deselected(self, items: list[pytest.Item]) -> None:
        self.reach.deselected.update(item.nodeid for item in items)

    def pytest_collectreport(self, report: pytest.CollectReport) -> None:
        self.reach.record_collection(report)

    @pytest.hookimpl(optionalhook=True)
    def pytest_xdist_node_collection_finished(self, node: Any, ids: list[str]) -> None:
        """xdist controller: the tests a worker collected (and will run), known up front."""
        self.reach.collected.update(ids)

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_makereport(self, item: pytest.Item, call: Any) -> Any:
        report = yield
        if self.is_worker and len(self.entries) > self._sent:
            # Each report carries the entries made since the last one: the controller
            # gets a check as soon as its test phase ends, even if this worker crashes later.
            setattr(report, REPORT_KEY, json.dumps(self.entries[self._sent :]))
            self._sent = len(self.entries)
        return report

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        # Under xdist the controller sees every worker's reports here too.
        if self.is_worker:
            return
        self.reach.record(report)
        sent = getattr(report, REPORT_KEY, None)
        if sent:
            self.entries.extend(json.loads(sent))

    @pytest.hookimpl(optionalhook=True)
    def pytest_testnodedown(self, node: Any, error: Any) -> None:
        """xdist controller: what a worker sent at its end (none if it crashed)."""
        payload = getattr(node, "workeroutput", {}).get(WORKEROUTPUT_KEY)
        if payload:
            sent = json.loads(payload)
            self.entries.extend(sent["entries"])
            self.reach.deselected.update(sent["deselected"])
            self.input_notes.update(sent["notes"])
            self._workers_reported += 1
        else:
            self._workers_lost += 1

    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        if self.is_worker:
            sent = {
                "entries": self.entries[self._sent :],
                "deselected": sorted(self.reach.deselected),
                "notes": self.input_notes,
            }
            # workeroutput: set on a worker's config by xdist, unknown to pytest's types
            self.config.workeroutput[WORKEROUTPUT_KEY] = json.dumps(sent)  # type: ignore[attr-defined]
            return
        # One entry per check id (a rerun plugin may run a test twice): the last one counts.
        self.entries = sorted_entries({e["check"]: e for e in self.entries}.values())
        if not self.entries:
            return
        self.reach.finish(session, exitstatus)
        if self._workers_lost and not self._workers_reported:
            self.reach.deselection_known = False  # every worker's list of deselected is lost
        self._write_reports()
        self._gate_baseline()
        if self.failed_request and session.exitstatus == pytest.ExitCode.OK:
            # an artifact the user asked for is missing: the run must not look green
            session.exitstatus = pytest.ExitCode.TESTS_FAILED

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        if self.options.summary and self.entries:
            terminalreporter.write_sep("=", "compression report")
            for line in terminal_table(self.entries, terminal_width(terminalreporter)):
                terminalreporter.write_line(line)
            for line in [*self._notes_under_table(), *self.notes]:
                terminalreporter.write_line(line)
        elif self.write_errors:
            terminalreporter.write_sep("=", "pytest-compress")
        for line in self.write_errors:
            terminalreporter.write_line(line, red=True)

    # --- the end of the session ----------------------------------------------------

    def _attempt(self, what: str, path: Path, requested: bool, write: Callable[[], Any]) -> bool:
        """Run one write; a failure is an error line (and, if requested, a failed run)."""
        try:
            write()
        except (OSError, BaselineError) as error:
            consequence = "the run fails for it" if requested else "not requested: the run goes on"
            self.write_errors.append(
                f"pytest-compress: could not write the {what} "
                f"{_shown(path, self.config.rootpath)}: {error} ({consequence})"
            )
            self.failed_request = self.failed_request or requested
            return False
        return True

    def _write_reports(self) -> None:
        report, markdown = self.options.report, self.options.markdown
        if report is not None and self._attempt(
            "JSON report",
            report,
            True,
            lambda: write_json_report(
                report, self.entries, device=self.options.device, notes=self._notes_under_table()
            ),
        ):
            self.notes.append(f"JSON report written to {report}")
        table = markdown_table(self.entries, self._notes_under_table())
        if markdown is not None and self._attempt(
            "Markdown report", markdown, True, lambda: write_text(markdown, table)
        ):
            self.notes.append(f"Markdown report written to {markdown}")
        step_summary = os.environ.get("GITHUB_STEP_SUMMARY")
        if step_summary:
            summary = Path(step_summary)
            self._attempt(
                "step summary ($GITHUB_STEP_SUMMARY)",
                summary,
                False,
                lambda: append_text(summary, table),
            )

    def _notes_under_table(self) -> list[str]:
        notes = [self.input_notes[key] for key in sorted(self.input_notes)]
        return cache_lines(self.entries, notes) + dominated_lines(self.entries)

    def _gate_baseline(self) -> None:
        """Compare with the stored baseline, or write it: a first run records, an update
        rewrites, the passing checks only (a failed check is no reference)."""
        path = self.options.baseline
        shown = _shown(path, self.config.rootpath)
        produced = {entry["check"]: baseline_entry(entry) for entry in self.entries}
        failed = [entry["check"] for entry in self.entries if not entry["passed"]]
        passing = {check: e for check, e in produced.items() if check not in failed}
        if self.baseline is None:
            self._record_baseline(path, shown, passing, failed)
            return
        # a failed check is no reference, but its test ran: its recorded entry is not stale
        stale, kept = self.baseline.triage(produced, self.reach.why_kept)
        recorded = self.baseline.checks
        written = None
        if self.options.update_baseline:
            if self._attempt("baseline", path, True, lambda: merge_into_file(path, passing, stale)):
                written = "updated"
        else:
            failed = []  # only a write leaves checks out
        self.notes.extend(
            baseline_lines(
                shown,
                produced=len(passing) if written else len(produced),
                kept=kept,
                new=[
                    check for check in (passing if written else produced) if check not in recorded
                ],
                stale=stale,
                regressed=[e["check"] for e in self.entries if e["baseline"] == "regressed"],
                written=written,
                failed=failed,
                recorded_before=recorded,
            )
        )

    def _record_baseline(
        self, path: Path, shown: Path, passing: dict[str, dict[str, Any]], failed: list[str]
    ) -> None:
        """No usable baseline: the first run records one of its passing checks (a write
        nobody asked for, so a failure does not fail the run; none when no check passed);
        an update rewrites a file it could not use."""
        update = self.options.update_baseline
        if not passing and not self.unreadable_baseline:
            self.notes.extend(baseline_lines(shown, produced=0, written="nothing", failed=failed))
            return
        if not self._attempt(
            "baseline",
            path,
            update,
            lambda: merge_into_file(path, passing, replace_unreadable=update),
        ):
            return
        written = "rewritten" if self.unreadable_baseline else "recorded"
        self.notes.extend(
            baseline_lines(shown, produced=len(passing), written=written, failed=failed)
        )


def terminal_width(terminalreporter: Any) -> int:
    """The width pytest writes to: its terminal writer's, else the terminal's (or COLUMNS)."""
    writer = getattr(terminalreporter, "_tw", None)
    width = getattr(writer, "fullwidth", None)
    return width if isinstance(width, int) else shutil.get_terminal_size().columns


def junit_properties(check_id: str, result: CompressionResult) -> list[tuple[str, object]]:
    """The key figures of a check as JUnit XML ``<property>`` elements."""
    return [
        ("compress_check", check_id),
        ("compress_recipe", result.recipe),
        ("compress_float_metric", result.float_metric),
        ("compress_compressed_metric", result.compressed_metric),
        ("compress_accuracy_drop", result.accuracy_drop),
        ("compress_float_size", result.float_size),
        ("compress_compressed_size", result.compressed_size),
        ("compress_size_ratio", result.size_ratio),
        ("compress_sparsity", result.sparsity),
        ("compress_passed", result.passed),
    ]


def resolve_inputs(request: pytest.FixtureRequest, check: CheckRequest) -> CheckInputs:
    """The check's inputs: its fixtures' values, or the objects a ``compress`` call gave."""
    fixtures, given = check.fixtures, check.given
    model_object, model_label = _resolve(request, given.get("model"), fixtures.model, "model")
    data_object, data_label = _resolve(request, given.get("data"), fixtures.data, "data")
    calibration, calibration_label = given.get("calibration_data"), "calibration data"
    # The default calibration fixture belongs to the default data fixture; a check on
    # other data calibrates on that data unless it names its own calibration fixture.
    if calibration is None and (
        fixtures.calibration_data != DEFAULT_CALIBRATION_FIXTURE
        or data_label == DEFAULT_DATA_FIXTURE
    ):
        calibration_label = fixtures.calibration_data
        calibration = _named_or_optional(request, calibration_label, "calibration_data")
    metric, metric_label = given.get("metric"), "metric"
    if metric is None:
        metric_label = fixtures.metric
        metric = _named_or_optional(request, metric_label, "metric")
    return CheckInputs(
        model=model_object,
        data=data_object,
        model_label=model_label,
        data_label=data_label,
        metric=metric,
        metric_label=metric_label,
        calibration=calibration,
        calibration_label=calibration_label,
        recovery=_recovery(request, check),
        **_compressor(request, check),
    )


def _compressor(request: pytest.FixtureRequest, check: CheckRequest) -> dict[str, Any]:
    """``compressor`` and ``compressor_label`` of the check's inputs, when it has one."""
    fixtures, given = check.fixtures, check.given
    if fixtures.compressor is None and "compressor" not in given:
        return {}
    compressor, label = _resolve(
        request, given.get("compressor"), fixtures.compressor or "", "compressor"
    )
    if not callable(compressor):
        pytest.fail(
            f"pytest-compress: the compressor {label!r} must be a callable "
            f"(model, calibration_data) -> nn.Module or Compressed, got "
            f"{type(compressor).__name__}",
            pytrace=False,
        )
    return {"compressor": compressor, "compressor_label": label}


def _recovery(request: pytest.FixtureRequest, check: CheckRequest) -> Recovery | None:
    """The check's ``Recovery`` (its callable and training data), or None."""
    fixtures, given = check.fixtures, check.given
    if fixtures.recover is None and "recover" not in given:
        return None
    recover_fn = _resolve(request, given.get("recover"), fixtures.recover or "", "recover")[0]
    if not callable(recover_fn):
        pytest.fail(
            f"pytest-compress: the recover fixture {fixtures.recover!r} must return a "
            f"callable (model, data) -> model, got {type(recover_fn).__name__}",
            pytrace=False,
        )
    train = _resolve(request, given.get("recover_data"), fixtures.recover_data, "recover_data")
    return Recovery(recover_fn, train[0])


def _resolve(
    request: pytest.FixtureRequest, given: Any, default_name: str, what: str
) -> tuple[Any, str]:
    """(object, label): a fixture by name, or an object given directly."""
    if given is not None and not isinstance(given, str):
        return given, f"<{type(given).__name__}>"
    name = given if isinstance(given, str) else default_name
    try:
        return request.getfixturevalue(name), name
    except pytest.FixtureLookupError as error:
        if error.argname != name:
            raise
    # outside the except block, so the report does not chain pytest's lookup error
    default = getattr(_DEFAULT_FIXTURES, what)
    pytest.fail(
        f"pytest-compress: no fixture named {name!r} for the {what}; define it "
        f'(e.g. in conftest.py) or name another one with {what}="..." '
        f"(the default is {default!r})",
        pytrace=False,
    )


def _named_or_optional(request: pytest.FixtureRequest, name: str, what: str) -> Any:
    """A fixture the marker named (it must exist), or the default one if the project has it."""
    if name != getattr(_DEFAULT_FIXTURES, what):
        return _resolve(request, None, name, what)[0]
    return _optional_fixture(request, name)


def _optional_fixture(request: pytest.FixtureRequest, name: str) -> Any:
    """The value of fixture ``name``, or None when the project does not define it."""
    try:
        return request.getfixturevalue(name)
    except pytest.FixtureLookupError as error:
        if error.argname != name:  # the fixture exists, one of its own fixtures is missing
            raise
        return None


def _shown(path: Path, root: Path) -> Path:
    try:
        return path.relative_to(root)
    except ValueError:
        return path
