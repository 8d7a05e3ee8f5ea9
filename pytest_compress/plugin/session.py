"""The plugin's state for one pytest session, and the hooks that act on the whole session.

``CompressSession`` is registered as a plugin object by ``plugin.pytest_configure``. It
holds the options, the caches shared by every check (float measurements, materialised
data and fingerprints, per fixture; the persistent result cache in ``config.cache``), the
baseline, and the entries of every check run here. On an xdist worker the entries go to
the controller through ``config.workeroutput``; the controller (or a serial run) writes
the reports and the baseline once, at the end.
"""

from __future__ import annotations

import json
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from ..checks.adjust import run_adjusted
from ..checks.cache import IdentityMemo, ResultCache
from ..checks.result import DEFAULT_METRIC, CompressionResult
from ..checks.runner import run_check
from .baseline import Baseline, BaselineError, baseline_entry, write_baseline
from .markers import (
    DEFAULT_CALIBRATION_FIXTURE,
    DEFAULT_DATA_FIXTURE,
    DEFAULT_METRIC_FIXTURE,
    DEFAULT_MODEL_FIXTURE,
    DEFAULT_RECOVER_DATA_FIXTURE,
    CheckRequest,
)
from .report import (
    append_text,
    baseline_lines,
    cache_lines,
    markdown_table,
    sorted_entries,
    terminal_table,
    write_json_report,
    write_text,
)

WORKEROUTPUT_KEY = "pytest_compress_entries"
_DEFAULT_FIXTURES = {
    "model": DEFAULT_MODEL_FIXTURE,
    "data": DEFAULT_DATA_FIXTURE,
    "metric": DEFAULT_METRIC_FIXTURE,
    "calibration_data": DEFAULT_CALIBRATION_FIXTURE,
    "recover": "none",
    "recover_data": DEFAULT_RECOVER_DATA_FIXTURE,
}
_DEVICE_PATTERN = re.compile(r"cpu|cuda(?::(\d+))?")


@dataclass(frozen=True)
class Options:
    """The plugin's options after the command line and the ini file were merged."""

    report: Path | None = None
    markdown: Path | None = None
    summary: bool = True
    baseline: Path = Path(".compress-baseline.json")
    tolerance: float = 0.005
    update_baseline: bool = False
    device: str = "cpu"
    disable: bool = False
    cache: bool = True
    cache_mb: float = 1024.0
    sensitivity: bool = True
    sensitivity_layers: int = 20


class CompressSession:
    """Options, caches and results of one session; registered as a plugin object."""

    def __init__(self, config: pytest.Config, options: Options) -> None:
        self.config = config
        self.options = options
        # Within the session, per fixture and object: the float measurements here, the
        # materialised data and fingerprints in `inputs` (made by the first check, which
        # imports torch). Across sessions: the result cache (set at session start).
        self.references = IdentityMemo()
        self._inputs: Any = None
        self.results: ResultCache | None = None
        self.entries: list[dict[str, Any]] = []
        self.baseline: Baseline | None = None
        self.notes: list[str] = []
        # what the reports say about data and the cache, by topic (workers' notes merge)
        self.input_notes: dict[str, str] = {}
        # which tests this run reached, to tell a stale baseline entry from one not run
        self.ran: set[str] = set()
        self.reported: set[str] = set()
        self.deselected: set[str] = set()
        self.is_worker = hasattr(config, "workerinput")

    # --- running checks ------------------------------------------------------------

    def run(
        self,
        request: pytest.FixtureRequest,
        check: CheckRequest,
        *,
        check_id: str,
        model: Any = None,
        data: Any = None,
    ) -> CompressionResult:
        """Resolve the fixtures, run the check, apply the baseline gate and record it.

        ``model`` / ``data`` are objects given to the ``compress`` callable; None means
        "the fixtures the request names".
        """
        from ..checks.inputs import calibrates  # here: it imports torch, which a check needs anyway

        model_object, model_label = _resolve(request, model, check.model, "model")
        data_object, data_label = _resolve(request, data, check.data, "data")
        metric = _named_or_optional(request, check.metric, "metric")
        calibration = None
        # The default calibration fixture belongs to the default data fixture; a check on
        # other data calibrates on that data unless it names its own calibration fixture.
        if (
            check.calibration_data != DEFAULT_CALIBRATION_FIXTURE
            or data_label == DEFAULT_DATA_FIXTURE
        ):
            calibration = _named_or_optional(request, check.calibration_data, "calibration_data")
        metric_name = DEFAULT_METRIC if metric is None else _metric_name(metric, check.metric)
        started = time.time()
        inputs = self.inputs
        evaluation = inputs.data(data_label, data_object)
        calibration_data = evaluation
        # read only by recipes that calibrate: others need not pay for reading it
        if calibration is not None and calibration is not data_object and calibrates(check):
            calibration_data = inputs.data(check.calibration_data, calibration, "calibration data")
        recovery = self._recovery(request, check)
        persistent = self.results if recovery is None else None  # see run_check

        def run_one(trial: CheckRequest) -> CompressionResult:
            keys = None
            if persistent is not None:
                keys = inputs.keys(
                    trial,
                    model=(model_label, model_object),
                    data=evaluation,
                    metric=(check.metric, metric),
                    calibration=calibration_data,
                )
            return run_check(
                model_object,
                evaluation.batches,
                trial,
                metric=metric,
                metric_name=metric_name,
                calibration_data=calibration_data.batches,
                device=self.options.device,
                cache=self.references,
                cache_key=(model_label, data_label, None if metric is None else check.metric),
                model_label=model_label,
                data_label=data_label,
                results=persistent,
                keys=keys,
                recovery=recovery,
            )

        def evaluate_model(compressed: Any) -> float:
            from ..engine.measure import evaluate

            return evaluate(compressed, evaluation.batches, metric, device=self.options.device)

        result = run_adjusted(
            check,
            run_one,
            model=model_object,
            evaluate=evaluate_model,
            calibration_data=calibration_data.batches,
            sensitivity_limit=self.options.sensitivity_layers if self.options.sensitivity else None,
            metric_name=metric_name,
        )
        finished = time.time()
        status = None
        if self.baseline is not None and not self.options.update_baseline:
            gate = self.baseline.compare(check_id, result.to_dict(), self.options.tolerance)
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

    def _recovery(self, request: pytest.FixtureRequest, check: CheckRequest) -> Any:
        """The check's ``Recovery`` (its fixture's callable and training data), or None."""
        if check.recover is None:
            return None
        from ..checks.runner import Recovery

        recover_fn = _resolve(request, None, check.recover, "recover")[0]
        if not callable(recover_fn):
            pytest.fail(
                f"pytest-compress: the recover fixture {check.recover!r} must return a "
                f"callable (model, data) -> model, got {type(recover_fn).__name__}",
                pytrace=False,
            )
        train = _resolve(request, None, check.recover_data, "recover_data")[0]
        return Recovery(recover_fn, train)

    @property
    def inputs(self) -> Any:
        """The session's ``CheckInputs``: data read once, fingerprints and cache keys."""
        if self._inputs is None:
            from ..checks.inputs import CheckInputs

            self._inputs = CheckInputs(
                device=self.options.device,
                cache_mb=self.options.cache_mb,
                fingerprints=self.results is not None,
                notes=self.input_notes,  # written here, sent to the controller by workers
            )
        return self._inputs

    # --- session hooks -------------------------------------------------------------

    def pytest_sessionstart(self, session: pytest.Session) -> None:
        # Here rather than in pytest_configure, so that `pytest --help` works whatever
        # the options say.
        check_device(self.options.device)
        store = getattr(self.config, "cache", None)  # None under -p no:cacheprovider
        if store is not None:
            # --compress-no-cache measures everything, and stores the fresh numbers
            self.results = ResultCache(store, read=self.options.cache)
        try:
            self.baseline = Baseline.load(self.options.baseline)
        except BaselineError as error:
            raise pytest.UsageError(f"pytest-compress: {error}") from None

    def pytest_deselected(self, items: list[pytest.Item]) -> None:
        self.deselected.update(item.nodeid for item in items)

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        # Under xdist the controller sees every worker's reports here too.
        self.reported.add(report.nodeid)
        if report.when == "call":
            self.ran.add(report.nodeid)

    @pytest.hookimpl(optionalhook=True)
    def pytest_testnodedown(self, node: Any, error: Any) -> None:
        """xdist controller: collect the entries a worker sent."""
        payload = getattr(node, "workeroutput", {}).get(WORKEROUTPUT_KEY)
        if payload:
            sent = json.loads(payload)
            self.entries.extend(sent["entries"])
            self.deselected.update(sent["deselected"])
            self.input_notes.update(sent["notes"])

    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        if self.is_worker:
            sent = {
                "entries": self.entries,
                "deselected": sorted(self.deselected),
                "notes": self.input_notes,
            }
            self.config.workeroutput[WORKEROUTPUT_KEY] = json.dumps(sent)  # type: ignore[attr-defined]
            return
        # One entry per check id (a rerun plugin may run a test twice): the last one counts.
        self.entries = sorted_entries({e["check"]: e for e in self.entries}.values())
        if self.entries:
            self._write_reports()
            self._gate_baseline()

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        if not self.options.summary or not self.entries:
            return
        terminalreporter.write_sep("=", "compression report")
        for line in terminal_table(self.entries):
            terminalreporter.write_line(line)
        for line in [*self._cache_lines(), *self.notes]:
            terminalreporter.write_line(line)

    # --- the end of the session ----------------------------------------------------

    def _write_reports(self) -> None:
        if self.options.report is not None:
            write_json_report(
                self.options.report,
                self.entries,
                device=self.options.device,
                notes=self._cache_lines(),
            )
            self.notes.append(f"JSON report written to {self.options.report}")
        table = markdown_table(self.entries, self._cache_lines())
        if self.options.markdown is not None:
            write_text(self.options.markdown, table)
            self.notes.append(f"Markdown report written to {self.options.markdown}")
        step_summary = os.environ.get("GITHUB_STEP_SUMMARY")
        if step_summary:
            append_text(Path(step_summary), table)

    def _cache_lines(self) -> list[str]:
        return cache_lines(
            self.entries, [self.input_notes[key] for key in sorted(self.input_notes)]
        )

    def _gate_baseline(self) -> None:
        path = self.options.baseline
        shown = _shown(path, self.config.rootpath)
        produced = {entry["check"]: baseline_entry(entry) for entry in self.entries}
        if self.baseline is None:  # the first run records
            write_baseline(path, produced)
            self.notes.extend(baseline_lines(shown, produced=len(produced), written="recorded"))
            return
        stale = self.baseline.stale(produced, self._expected)
        new = [check for check in produced if check not in self.baseline.checks]
        written = None
        if self.options.update_baseline:
            checks = self.baseline.updated(produced, stale)
            write_baseline(path, checks)
            written = "updated"
        self.notes.extend(
            baseline_lines(
                shown,
                produced=len(produced),
                kept=len(checks) - len(produced) if written else 0,
                new=new,
                stale=stale,
                regressed=[e["check"] for e in self.entries if e["baseline"] == "regressed"],
                written=written,
            )
        )

    def _expected(self, test: str) -> bool:
        """Whether this run should have produced the recorded checks of node id ``test``."""
        if test in self.ran:
            return True  # its body ran: a check it did not produce is stale
        if test in self.reported or test in self.deselected:
            return False  # skipped, errored at setup or deselected: nothing to conclude
        # Not collected: stale if its file was part of this run (a deleted or renamed test),
        # unknown if the run did not include that file.
        return test.split("::", 1)[0] in {node.split("::", 1)[0] for node in self.reported}


def check_device(device: str) -> None:
    """``pytest.UsageError`` unless ``device`` is cpu, or a CUDA device that exists here."""
    match = _DEVICE_PATTERN.fullmatch(device)
    if match is None:
        raise pytest.UsageError(
            f"--compress-device={device!r}: expected cpu, cuda or cuda:N (e.g. cuda:0)"
        )
    if device == "cpu":
        return
    import torch

    if not torch.cuda.is_available():
        raise pytest.UsageError(
            f"--compress-device={device}: CUDA is not available on this machine "
            f"(torch {torch.__version__}); use --compress-device=cpu"
        )
    index = int(match[1] or 0)
    if index >= torch.cuda.device_count():
        raise pytest.UsageError(
            f"--compress-device={device}: this machine has {torch.cuda.device_count()} CUDA "
            f"device(s), cuda:0 to cuda:{torch.cuda.device_count() - 1}"
        )


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
    default = _DEFAULT_FIXTURES[what]
    pytest.fail(
        f"pytest-compress: no fixture named {name!r} for the {what}; define it "
        f'(e.g. in conftest.py) or name another one with {what}="..." '
        f"(the default is {default!r})",
        pytrace=False,
    )


def _named_or_optional(request: pytest.FixtureRequest, name: str, what: str) -> Any:
    """A fixture the marker named (it must exist), or the default one if the project has it."""
    if name != _DEFAULT_FIXTURES[what]:
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


def _metric_name(metric: Any, fixture: str) -> str:
    """The metric's function name, or its fixture's name for a lambda or a callable object."""
    name = getattr(metric, "__name__", "")
    return fixture if not name or name.startswith("<") else name
