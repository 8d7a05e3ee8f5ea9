"""The stored baseline: each check's compressed metric and size, kept in the user's repo.

The file is sorted, indented JSON (one check per block, keys in order) so a change of
one check is a small, reviewable diff, and it is written atomically: a temporary file in
the same folder, flushed to disk, then ``os.replace``d over the old one, so a crash
mid-write leaves the old file whole. Writes take a lock and merge by entry
(``merge_into_file``): the file is read again under the lock, this run's entries are set,
the stale ones removed, and every other entry, a concurrent run's included, stays.

The file is standard JSON: a non-finite number the plugin records (a metric that came out
NaN) is written as null plus its name (``strict_json``); a bare ``NaN`` or ``Infinity``,
which only a hand edit can put there, makes the file invalid.

A later run compares: the compressed metric may be worse than the recorded one by at most
``tolerance`` (absolute, in the metric's units), and the compressed size may grow by at
most ``SIZE_GROWTH`` (1 %). A check timed by a latency budget also records its latency
ratio; a later run regresses when the whole 95 % interval of its ratio lies above the
recorded ratio times ``1 + latency_tolerance`` (``DEFAULT_LATENCY_TOLERANCE``, 25 %:
twice the run-to-run spread measured on a quiet 2-core machine, 13.5 % of the median
over 40 runs, so noise does not fail a build while a model a quarter slower does).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import strict_json
from ..budgets import BudgetCheck, at_least, at_most
from ..checks.result import CompressionResult
from ..files import locked, write_text_atomically
from ..tuning.grids import less_compression

SCHEMA_VERSION = 1
SIZE_GROWTH = 0.01
DEFAULT_LATENCY_TOLERANCE = 0.25
# What each entry stores: the gated numbers, and enough context for a reviewer.
RECORDED_FIELDS = (
    "test",
    "compressed_metric",
    "compressed_size",
    "data",
    "float_metric",
    "float_size",
    "higher_is_better",
    "metric",
    "model",
    "recipe",
)
_SIGNIFICANT_DIGITS = 10


class BaselineError(ValueError):
    """The baseline file cannot be used; the message names the file and the problem."""


@dataclass
class Baseline:
    """The recorded checks by check id (a test node id, or that plus the call's label)."""

    path: Path
    checks: dict[str, dict[str, Any]] = field(default_factory=dict)

    @classmethod
    def load(cls, path: Path) -> Baseline | None:
        """The baseline at ``path``, None when there is no file; ``BaselineError`` if invalid."""
        try:
            text = path.read_text(encoding="utf-8")
        except (FileNotFoundError, NotADirectoryError):
            return None
        except OSError as error:
            raise BaselineError(f"cannot read the baseline file {path}: {error}") from None
        try:
            document = strict_json.loads(text)
        except strict_json.NonFiniteError as error:
            raise BaselineError(
                f"the baseline file {path} holds a non-finite number: {error}; a baseline "
                "value must be a real number (the plugin writes a metric that came out NaN "
                'as null with "non_finite"); fix the value, or run with '
                "--compress-update-baseline to rewrite it"
            ) from None
        except json.JSONDecodeError as error:
            raise BaselineError(
                f"the baseline file {path} is not valid JSON ({error}); fix it, or run "
                "with --compress-update-baseline to rewrite it"
            ) from None
        return cls(path, _validated(document, path))

    def compare(
        self,
        check_id: str,
        result: CompressionResult,
        tolerance: float,
        latency_tolerance: float = DEFAULT_LATENCY_TOLERANCE,
    ) -> list[BudgetCheck] | None:
        """The baseline gate for one check's result; None when the check is new."""
        recorded = self.checks.get(check_id)
        if recorded is None:
            return None
        searched = _search_gate(result, recorded, tolerance)
        gate = searched if searched is not None else _ordinary_gate(result, recorded, tolerance)
        return gate + _latency_gate(result, recorded, latency_tolerance)

    def triage(
        self, produced: Iterable[str], why_kept: Callable[[str], str | None]
    ) -> tuple[list[str], dict[str, list[str]]]:
        """(stale check ids, {reason: kept check ids}) of the recorded checks not produced.

        ``why_kept(test)`` says why the checks of test node id ``test`` stay although this
        run did not make them (deselected, not run, ...), or None when the run proves them
        stale (see ``reach.Reach``). Both sorted.
        """
        done = set(produced)
        stale: list[str] = []
        kept: dict[str, list[str]] = {}
        for check_id in sorted(self.checks):
            if check_id in done:
                continue
            reason = why_kept(test_of(check_id, self.checks[check_id]))
            if reason is None:
                stale.append(check_id)
            else:
                kept.setdefault(reason, []).append(check_id)
        return stale, kept


def _ordinary_gate(
    result: CompressionResult, recorded: Mapping[str, Any], tolerance: float
) -> list[BudgetCheck]:
    """The compressed metric within ``tolerance`` of the recorded one, the size within 1 %."""
    metric, recorded_metric = result.compressed_metric, recorded["compressed_metric"]
    if result.higher_is_better:
        metric_limit = recorded_metric - tolerance
        metric_ok = at_least(metric, metric_limit)
    else:
        metric_limit = recorded_metric + tolerance
        metric_ok = at_most(metric, metric_limit)
    if not math.isfinite(recorded_metric):
        # a recorded NaN or infinity: only the same non-finite value matches it (a limit of
        # NaN or infinity would otherwise make a gate that can never fail, or never pass)
        same = not math.isfinite(metric) and strict_json.non_finite_name(
            metric
        ) == strict_json.non_finite_name(recorded_metric)
        metric_limit, metric_ok = recorded_metric, same
    size, recorded_size = result.compressed_size, recorded["compressed_size"]
    size_limit = recorded_size * (1 + SIZE_GROWTH)
    return [
        BudgetCheck("baseline_metric", metric, metric_limit, metric_ok, recorded_metric),
        BudgetCheck("baseline_size", size, size_limit, at_most(size, size_limit), recorded_size),
    ]


def _latency_gate(
    result: CompressionResult, recorded: Mapping[str, Any], latency_tolerance: float
) -> list[BudgetCheck]:
    """The latency ratio within ``1 + latency_tolerance`` of the recorded one, judged on the
    interval (the whole of it above the limit regresses); nothing when either side is
    untimed."""
    timed, before = result.latency_measured, recorded.get("latency_ratio")
    if timed is None or isinstance(before, bool) or not isinstance(before, (int, float)):
        return []
    limit = before * (1 + latency_tolerance)
    return [BudgetCheck("baseline_latency", timed.ratio, limit, timed.low <= limit, before)]


def _search_gate(
    result: CompressionResult, recorded: Mapping[str, Any], tolerance: float
) -> list[BudgetCheck] | None:
    """The gate of a search check: its chosen setting, then (same setting) metric and size.

    A search that finds more compression than recorded is not held to the recorded metric
    and size (more compression costs some metric: the check's budgets still hold it); one
    that finds less, beyond the search's tolerance in grid steps, regressed. None when
    the check is no search or was recorded without one (the ordinary gate applies).
    """
    found, before = result.search, recorded.get("search")
    if found is None or not isinstance(before, Mapping):
        return None
    kind = found.kind
    if before.get("search") != kind:
        return None
    chosen, recorded_setting = found.chosen, before.get("chosen")
    less = less_compression(kind, chosen, recorded_setting)
    actual = math.nan if chosen is None else float(chosen)
    reference = math.nan if recorded_setting is None else float(recorded_setting)
    gate = [BudgetCheck("baseline_search", actual, reference, not less, reference)]
    if chosen == recorded_setting:
        gate += _ordinary_gate(result, recorded, tolerance)
    return gate


def test_of(check_id: str, entry: Mapping[str, Any]) -> str:
    """The test node id of a recorded check (its ``test``, else derived from the id)."""
    test = entry.get("test")
    # a check of the compress callable is "<node id> [<label>]"
    return test if isinstance(test, str) else check_id.split(" [", 1)[0]


def baseline_entry(entry: Mapping[str, Any]) -> dict[str, Any]:
    """What the baseline records of one check's result fields (and a search's choice)."""
    recorded = {name: _rounded(entry[name]) for name in RECORDED_FIELDS}
    latency = entry.get("latency")
    if isinstance(latency, Mapping):
        recorded["latency_ratio"] = _rounded(latency["ratio"])
    search = entry.get("search")
    if isinstance(search, Mapping):
        recorded["search"] = {
            "search": search["search"],
            "chosen": _rounded(search["chosen"]),
            "evaluations": search["evaluations"],
        }
    return recorded


def render(checks: Mapping[str, Mapping[str, Any]]) -> str:
    """The file's text: sorted keys, two-space indent, a final newline, standard JSON."""
    document = {"schema_version": SCHEMA_VERSION, "checks": dict(checks)}
    return strict_json.dumps(document, indent=2, sort_keys=True) + "\n"


def write_baseline(path: Path, checks: Mapping[str, Mapping[str, Any]]) -> None:
    """Write the baseline atomically: the old file stays whole if anything fails midway.

    Call it holding ``locked(path)``: it removes any temporary file a killed write left.
    """
    write_text_atomically(path, render(checks), leftovers_after=0)


def merge_into_file(
    path: Path,
    produced: Mapping[str, Mapping[str, Any]],
    stale: Iterable[str] = (),
    *,
    replace_unreadable: bool = False,
) -> dict[str, dict[str, Any]]:
    """Under the file's lock: this run's entries set, ``stale`` ones removed, others kept.

    The file is read again under the lock, so entries another run wrote since this one
    started stay. An unreadable file raises ``BaselineError``, unless
    ``replace_unreadable`` (an update run asked to rewrite it). Returns what was written.
    """
    with locked(path):
        try:
            current = Baseline.load(path)
        except BaselineError:
            if not replace_unreadable:
                raise
            current = None
        gone = set(stale)
        checks = {
            check_id: entry
            for check_id, entry in (current.checks if current is not None else {}).items()
            if check_id not in gone and check_id not in produced
        }
        checks.update({check_id: dict(entry) for check_id, entry in produced.items()})
        write_baseline(path, checks)
    return checks


def _rounded(value: Any) -> Any:
    # Ten significant digits: far below any tolerance, and the last bits of a float sum
    # (which differ with thread counts) do not churn the diff.
    if isinstance(value, float) and math.isfinite(value):
        return float(f"{value:.{_SIGNIFICANT_DIGITS}g}")
    return value


def _validated(document: Any, path: Path) -> dict[str, dict[str, Any]]:
    def wrong(problem: str) -> BaselineError:
        return BaselineError(
            f"the baseline file {path} has the wrong schema: {problem}; expected "
            f'{{"schema_version": {SCHEMA_VERSION}, "checks": {{check id: {{"compressed_metric": '
            'number, "compressed_size": int, ...}}}}; run with --compress-update-baseline '
            "to rewrite it"
        )

    if not isinstance(document, dict):
        raise wrong(f"the top level is a {type(document).__name__}, not an object")
    if document.get("schema_version") != SCHEMA_VERSION:
        raise wrong(f"schema_version is {document.get('schema_version')!r}")
    checks = document.get("checks")
    if not isinstance(checks, dict):
        raise wrong('"checks" is missing or not an object')
    for check_id, entry in checks.items():
        if not isinstance(entry, dict):
            raise wrong(f"the entry {check_id!r} is not an object")
        checks[check_id] = entry = strict_json.decoded(entry)
        metric = entry.get("compressed_metric")
        if isinstance(metric, bool) or not isinstance(metric, (int, float)):
            raise wrong(f"the entry {check_id!r} has no numeric compressed_metric")
        size = entry.get("compressed_size")
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise wrong(f"the entry {check_id!r} has no compressed_size in bytes")
    return checks
