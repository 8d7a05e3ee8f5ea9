"""The stored baseline: each check's compressed metric and size, kept in the user's repo.

The file is sorted, indented JSON (one check per block, keys in order) so a change of
one check is a small, reviewable diff, and it is written atomically: a temporary file in
the same folder, flushed to disk, then ``os.replace``d over the old one, so a crash
mid-write leaves the old file whole.

A later run compares: the compressed metric may be worse than the recorded one by at most
``tolerance`` (absolute, in the metric's units), and the compressed size may grow by at
most ``SIZE_GROWTH`` (1 %).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..budgets import BudgetCheck, at_least, at_most
from ..checks.result import CompressionResult
from ..files import write_text_atomically
from ..tuning.grids import less_compression

SCHEMA_VERSION = 1
SIZE_GROWTH = 0.01
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
        except FileNotFoundError:
            return None
        except OSError as error:
            raise BaselineError(f"cannot read the baseline file {path}: {error}") from None
        try:
            document = json.loads(text)
        except json.JSONDecodeError as error:
            raise BaselineError(
                f"the baseline file {path} is not valid JSON ({error}); fix it, or delete it "
                "and run with --compress-update-baseline to record a new one"
            ) from None
        return cls(path, _validated(document, path))

    def compare(
        self, check_id: str, result: CompressionResult, tolerance: float
    ) -> list[BudgetCheck] | None:
        """The baseline gate for one check's result; None when the check is new."""
        recorded = self.checks.get(check_id)
        if recorded is None:
            return None
        searched = _search_gate(result, recorded, tolerance)
        if searched is not None:
            return searched
        return _ordinary_gate(result, recorded, tolerance)

    def stale(self, produced: Iterable[str], expected: Callable[[str], bool]) -> list[str]:
        """Recorded check ids this run should have produced and did not, sorted.

        ``expected(test)`` says whether this run was in a position to produce the checks of
        the test node id ``test``: a test that was deselected, or whose file was not part
        of the run, leaves its entries alone rather than calling them stale.
        """
        done = set(produced)
        return sorted(
            check_id
            for check_id, entry in self.checks.items()
            if check_id not in done and expected(test_of(check_id, entry))
        )

    def updated(
        self, produced: Mapping[str, Mapping[str, Any]], stale: Iterable[str]
    ) -> dict[str, dict[str, Any]]:
        """The checks after an update: this run's, plus recorded ones it had no say about."""
        kept = {k: v for k, v in self.checks.items() if k not in set(stale) and k not in produced}
        return {**kept, **{k: dict(v) for k, v in produced.items()}}


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
    size, recorded_size = result.compressed_size, recorded["compressed_size"]
    size_limit = recorded_size * (1 + SIZE_GROWTH)
    return [
        BudgetCheck("baseline_metric", metric, metric_limit, metric_ok, recorded_metric),
        BudgetCheck("baseline_size", size, size_limit, at_most(size, size_limit), recorded_size),
    ]


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
    search = entry.get("search")
    if isinstance(search, Mapping):
        recorded["search"] = {
            "search": search["search"],
            "chosen": _rounded(search["chosen"]),
            "evaluations": search["evaluations"],
        }
    return recorded


def render(checks: Mapping[str, Mapping[str, Any]]) -> str:
    """The file's text: sorted keys, two-space indent, a final newline."""
    document = {"schema_version": SCHEMA_VERSION, "checks": dict(checks)}
    return json.dumps(document, indent=2, sort_keys=True) + "\n"


def write_baseline(path: Path, checks: Mapping[str, Mapping[str, Any]]) -> None:
    """Write the baseline atomically: the old file stays whole if anything fails midway."""
    write_text_atomically(path, render(checks))


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
        metric = entry.get("compressed_metric")
        if isinstance(metric, bool) or not isinstance(metric, (int, float)):
            raise wrong(f"the entry {check_id!r} has no numeric compressed_metric")
        size = entry.get("compressed_size")
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise wrong(f"the entry {check_id!r} has no compressed_size in bytes")
    return checks
