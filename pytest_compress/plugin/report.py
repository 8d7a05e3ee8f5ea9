"""The reports of a session's checks: terminal table, Markdown table and JSON document.

Every report is built from the checks' plain dict entries (``CompressionResult.to_dict()``
plus ``check``, ``test`` and ``baseline``), the form in which xdist workers send them,
and lists them sorted by check id, so a parallel run reports exactly what a serial one does.
The JSON report is standard JSON: a non-finite number is null plus its name
(``"non_finite": {"compressed_metric": "NaN"}``, see ``strict_json``).
"""

from __future__ import annotations

import os
import platform
import sys
from collections.abc import Container, Iterable, Mapping, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any, TypeVar

from .. import strict_json
from ..checks.result import preset_floats
from ..files import write_text_atomically
from ..metrics import MetricKind
from ..tables import fit_table, narrowed, shorten, text_table, wrap_items
from ..tuning.grids import format_setting
from ..units import distinct, format_fraction, format_ratio, format_size
from .reach import NOT_IN_RUN

JSON_SCHEMA_VERSION = 1
COLUMNS = ("test", "recipe", "metric", "drop", "size", "ratio", "sparsity", "verdict")
# The text cells, shortened to fit a width (an ellipsis in the middle); numbers never are.
TEXT_COLUMNS = (0, 1)
# The least a text cell keeps before the terminal table becomes one block per check.
MIN_TEXT_WIDTH = 16
# The longest row of the Markdown table (a row cannot wrap): the whole text of any
# ordinary check fits; only a very long recipe or test id (a large model) is shortened.
MARKDOWN_WIDTH = 240
# Layers kept float that a table row names; more are counted ("float: 20 layers (+69.4 MB)").
KEPT_NAMED = 3

Entry = Mapping[str, Any]
E = TypeVar("E", bound=Entry)


def sorted_entries(entries: Iterable[E]) -> list[E]:
    return sorted(entries, key=lambda entry: entry["check"])


def metric_kind(entry: Entry) -> MetricKind:
    """How the entry's metric reads."""
    return MetricKind.named(entry["metric"], entry["higher_is_better"])


def verdict(entry: Entry) -> str:
    """``ok``, ``FAILED`` (a budget broke) or ``REGRESSED`` (only the baseline gate broke),
    followed by ``(cached)`` when the numbers came from the persistent cache."""
    violations = entry["violations"]
    if not violations:
        word = "ok"
    elif all(v["budget"].startswith("baseline_") for v in violations):
        word = "REGRESSED"
    else:
        word = "FAILED"
    return f"{word} (cached)" if entry.get("cached") else word


def row(entry: Entry) -> list[str]:
    """One table row: test, recipe, metric before -> after, drop, size before -> after, ..."""
    kind = metric_kind(entry)
    before, after = distinct(entry["float_metric"], entry["compressed_metric"], kind.value)
    metric = f"{before} -> {after}"
    size = f"{format_size(entry['float_size'])} -> {format_size(entry['compressed_size'])}"
    return [
        entry["check"],
        recipe_cell(entry),
        metric,
        kind.difference(entry["accuracy_drop"]),
        size,
        format_ratio(entry["size_ratio"]),
        _sparsity(entry["sparsity"]),
        verdict(entry),
    ]


def _sparsity(value: float | None) -> str:
    """The sparsity cell: ``n/a`` for an artifact whose weights cannot be read."""
    return "n/a" if value is None or value != value else format_fraction(value)


def recipe_cell(entry: Entry) -> str:
    """The recipe, then how it was adjusted: ``prune 83% (...) [search sparsity 0.83, 7 evals]``."""
    notes = []
    runtime = entry.get("runtime", "simulate")
    if runtime != "simulate":
        timed = entry.get("latency")
        notes.append(runtime + (f"; latency {format_ratio(timed['ratio'])}x" if timed else ""))
    by_preset = preset_floats(entry.get("skipped_layers") or {})
    if by_preset:
        presets = " ".join(sorted(set(by_preset.values())))
        notes.append(f"float by preset: {len(by_preset)} layers ({presets})")
    search = entry.get("search")
    if search:
        found = format_setting(search["search"], search["chosen"]) if search["passed"] else "none"
        notes.append(f"search {search['search']} {found}, {search['evaluations']} evals")
    kept = entry.get("keep_float")
    if kept and kept["kept_float"]:
        cost = format_size(abs(kept["size_cost"]))
        sign = "+" if kept["size_cost"] >= 0 else "-"
        names = kept["kept_float"]
        # a long list is counted: the JSON report keeps every name
        shown = ", ".join(names) if len(names) <= KEPT_NAMED else f"{len(names)} layers"
        notes.append(f"float: {shown} ({sign}{cost})")
    recovery = entry.get("recovery")
    if recovery and recovery["metric_before"] is not None:
        kind = metric_kind(entry)
        notes.append(
            f"recovered {kind.value(recovery['metric_before'])} -> "
            f"{kind.value(recovery['metric_after'])}"
        )
    return f"{entry['recipe']} [{'; '.join(notes)}]" if notes else entry["recipe"]


def terminal_table(entries: Iterable[Entry], width: int | None = None) -> list[str]:
    """The table as aligned text lines, header first, each at most ``width`` long.

    The test and recipe cells are shortened to fit; when the numbers leave them too
    little room, each check is a block of lines instead (``stacked``). The JSON report
    keeps the full text.
    """
    rows = [row(entry) for entry in sorted_entries(entries)]
    if width is None:
        return text_table(COLUMNS, rows)
    fitted = fit_table(COLUMNS, rows, width, shrink=TEXT_COLUMNS, minimum=MIN_TEXT_WIDTH)
    return fitted if fitted is not None else stacked(rows, width)


def stacked(rows: Iterable[Sequence[str]], width: int) -> list[str]:
    """Each check as a block within ``width``: the test and its verdict, the recipe, then
    the numbers by name, wrapped between them (a number is never cut)."""
    lines = []
    for test, recipe, *numbers, outcome in rows:
        lines.append(f"{shorten(test, width - len(outcome) - 2)}  {outcome}")
        lines.append("  " + shorten(recipe, width - 2))
        named = [f"{name} {value}" for name, value in zip(COLUMNS[2:-1], numbers, strict=True)]
        lines += wrap_items(named, width, indent="  ")
    return lines


def markdown_table(entries: Iterable[Entry], notes: Sequence[str] = ()) -> str:
    """The table in GitHub-flavoured Markdown, under a ``compression report`` heading.

    Each row is at most ``MARKDOWN_WIDTH`` characters: its test and recipe cells are
    shortened as the terminal's are. ``notes`` (the terminal's lines about the data and
    the cache) follow as a list.
    """
    lines = [
        "## compression report",
        "",
        "| " + " | ".join(COLUMNS) + " |",
        "|" + "---|" * len(COLUMNS),
    ]
    for entry in sorted_entries(entries):
        cells = row(entry)
        cells[0] = f"`{cells[0]}`"
        room = MARKDOWN_WIDTH - len(" | ") * (len(cells) - 1) - len("|  |")
        widths = narrowed([len(_escaped(c)) for c in cells], room, TEXT_COLUMNS, MIN_TEXT_WIDTH)
        test, recipe = widths[:2] if widths is not None else (MIN_TEXT_WIDTH,) * 2
        cells = [
            f"`{_markdown_cell(cells[0][1:-1], test - 2)}`",
            _markdown_cell(cells[1], recipe),
            *(_escaped(cell) for cell in cells[2:]),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    if notes:
        lines += ["", *(f"- {note}" for note in notes)]
    return "\n".join(lines) + "\n"


def _escaped(cell: str) -> str:
    return cell.replace("|", "\\|")


def _markdown_cell(text: str, width: int) -> str:
    """``text`` escaped for a table cell, shortened to ``width`` escaped characters."""
    if len(_escaped(text)) <= width:
        return _escaped(text)
    return _escaped(shorten(text, width - text.count("|")))


def json_report(
    entries: Iterable[Entry], *, device: str, notes: Sequence[str] = ()
) -> dict[str, Any]:
    """The JSON report: versions, the machine, notes, and one object per check (sorted by id).

    ``notes`` say what the terminal says under the table about the data and the cache
    (data streamed rather than kept, checks served from the cache).
    """
    return {
        "schema_version": JSON_SCHEMA_VERSION,
        "plugin": "pytest-compress",
        "plugin_version": _version("pytest-compress"),
        "torch_version": _version("torch"),
        "pytest_version": _version("pytest"),
        "python_version": platform.python_version(),
        "python_implementation": platform.python_implementation(),
        "machine": {
            "node": platform.node(),
            "system": platform.system(),
            "release": platform.release(),
            "machine": platform.machine(),
            "processor": platform.processor(),
            "cpu_count": os.cpu_count(),
            "device": device,
        },
        "notes": list(notes),
        "checks": [dict(entry) for entry in sorted_entries(entries)],
    }


def write_text(path: Path, text: str) -> None:
    write_text_atomically(path, text)


def write_json_report(
    path: Path, entries: Iterable[Entry], *, device: str, notes: Sequence[str] = ()
) -> None:
    document = json_report(entries, device=device, notes=notes)
    write_text(path, strict_json.dumps(document, indent=2) + "\n")


def append_text(path: Path, text: str) -> None:
    """Append (GitHub's step summary collects what every step appends)."""
    with path.open("a", encoding="utf-8") as stream:
        stream.write(text)


def cache_lines(entries: Sequence[Entry], notes: Sequence[str]) -> list[str]:
    """How many checks the persistent cache served, then the notes about data and the cache."""
    cached = sum(1 for entry in entries if entry.get("cached"))
    lines = []
    if cached:
        lines.append(
            f"cache: {cached} of {len(entries)} checks reused from an earlier run with the same "
            "weights, data, metric, recipe and versions (budgets checked again; "
            "--compress-no-cache measures all)"
        )
    return lines + list(notes)


# Checks on one model, data set and metric: their metrics and sizes compare.
SAME_SUBJECT = ("model", "data", "metric", "higher_is_better", "device")


def dominated_lines(entries: Sequence[Entry]) -> list[str]:
    """One line per check that kept layers float (``keep_float``) while a check of a simpler
    recipe on the same model, data and metric came out smaller *and* better: the mixed
    precision bought nothing."""
    lines = []
    ordered = sorted_entries(entries)
    simple = [e for e in ordered if not (e.get("keep_float") or {}).get("kept_float")]
    for entry in ordered:
        kept = (entry.get("keep_float") or {}).get("kept_float")
        if not kept:
            continue
        better = [
            other
            for other in simple
            if all(other[key] == entry[key] for key in SAME_SUBJECT)
            and other["compressed_size"] < entry["compressed_size"]
            and _better(other, entry)
        ]
        if better:
            best = min(better, key=lambda e: (e["compressed_size"], e["check"]))
            kind = metric_kind(entry)
            lines.append(
                f"dominated: {entry['check']} keeps {', '.join(kept)} float, yet "
                f"{best['check']} ({best['recipe']}) is smaller "
                f"({format_size(best['compressed_size'])} < "
                f"{format_size(entry['compressed_size'])}) and better ({entry['metric']} "
                f"{kind.value(best['compressed_metric'])} vs "
                f"{kind.value(entry['compressed_metric'])}): the simpler recipe wins"
            )
    return lines


def _better(entry: Entry, other: Entry) -> bool:
    """``entry``'s compressed metric is strictly better than ``other``'s (NaN never is)."""
    mine, theirs = entry["compressed_metric"], other["compressed_metric"]
    if mine is None or theirs is None or mine != mine or theirs != theirs:
        return False
    return bool(mine > theirs if entry["higher_is_better"] else mine < theirs)


def baseline_lines(
    path: Path,
    *,
    produced: int,
    written: str | None,
    kept: Mapping[str, Sequence[str]] | None = None,
    new: Sequence[str] = (),
    stale: Sequence[str] = (),
    regressed: Sequence[str] = (),
    failed: Sequence[str] = (),
    recorded_before: Container[str] = (),
) -> list[str]:
    """What happened to the stored baseline, one fact per line.

    ``produced`` counts the checks written; ``failed`` are those a write left out (a
    failed check is no reference), of which ``recorded_before`` kept their old entry.
    """
    if written == "nothing":
        return [
            f"baseline {path}: no baseline yet; none of the {len(failed)} checks passed, "
            "nothing recorded (a failed check is no reference)"
        ]
    unrecorded = [
        f"  not recorded (failed{'; its recorded entry stays' if c in recorded_before else ''}"
        f"): {c}"
        for c in failed
    ]
    if written == "recorded":
        return [f"baseline {path}: no baseline yet, recorded {produced} checks", *unrecorded]
    if written == "rewritten":
        return [
            f"baseline {path}: the file could not be used; rewritten from this run "
            f"({produced} checks)",
            *unrecorded,
        ]
    if written == "updated":
        lines = [f"baseline {path}: updated from this run ({produced} checks)"]
        lines += kept_lines(kept or {})
        lines += [f"  added: {check}" for check in new]
        lines += [f"  removed (stale): {check}" for check in stale]
        return lines + unrecorded
    return compared_lines(path, produced, new=new, stale=stale, regressed=regressed)


def compared_lines(
    path: Path,
    produced: int,
    *,
    new: Sequence[str],
    stale: Sequence[str],
    regressed: Sequence[str],
) -> list[str]:
    """A run that only compared: the counts, then each regressed, new and stale check."""
    lines = [
        f"baseline {path}: {produced - len(new)} checks compared, {len(regressed)} regressed, "
        f"{len(new)} new, {len(stale)} stale"
    ]
    lines += [f"  regressed: {check}" for check in regressed]
    lines += [f"  new (not in the baseline): {check}" for check in new]
    lines += [f"  stale (no check produced it): {check}" for check in stale]
    if new or stale or regressed:
        lines.append("  run with --compress-update-baseline to rewrite the baseline from this run")
    return lines


def kept_lines(kept: Mapping[str, Sequence[str]], shown: int = 10) -> list[str]:
    """The recorded checks an update kept although this run did not make them, by reason.

    Those of files not part of the run (every partial run has them) are only counted.
    """
    lines = []
    for reason in sorted(kept):
        checks = kept[reason]
        if reason == NOT_IN_RUN:
            lines.append(f"  kept ({reason}): {len(checks)} recorded checks")
            continue
        lines += [f"  kept ({reason}): {check}" for check in checks[:shown]]
        if len(checks) > shown:
            lines.append(f"  kept ({reason}): ... and {len(checks) - shown} more")
    return lines


def _version(distribution: str) -> str | None:
    # The imported module's own version first: torch's carries its build ("2.4.0+cu121").
    module = sys.modules.get(distribution.replace("-", "_"))
    version = getattr(module, "__version__", None)
    if version:
        return str(version)
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None
