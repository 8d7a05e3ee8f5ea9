"""The plugin's options: one table, each option's default written once.

Every option is a command-line flag and an ini key (spelled with dashes, as the flag, or
with underscores, as pytest's own keys are); the command line wins. ``read_options``
merges them into ``Options`` and refuses a bad value with a ``pytest.UsageError``
naming the option.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import pytest

from ..checks.copies import DEFAULT_LOW_MEMORY, DEFAULT_LOW_MEMORY_SHARE, LOW_MEMORY_MODES
from ..runtimes.latency import DEFAULT_MAX_SECONDS
from ..tuning.grids import DEFAULT_SENSITIVITY_LAYERS
from .baseline import DEFAULT_LATENCY_TOLERANCE

DEFAULT_BASELINE = ".compress-baseline.json"
DEFAULT_TOLERANCE = 0.005
DEFAULT_DEVICE = "cpu"
DEFAULT_CACHE_MB = 1024.0
# Latency: rounds stop when the ratio's interval is tight or after this many seconds; one
# thread, the same for torch and the runtime, makes the ratio repeatable on a shared machine.
DEFAULT_LATENCY_SECONDS = DEFAULT_MAX_SECONDS
DEFAULT_THREADS = 1
_DEVICE_PATTERN = re.compile(r"cpu|cuda(?::(\d+))?")


@dataclass(frozen=True)
class Options:
    """The plugin's options after the command line and the ini file were merged."""

    report: Path | None = None
    markdown: Path | None = None
    summary: bool = True
    baseline: Path = Path(DEFAULT_BASELINE)
    tolerance: float = DEFAULT_TOLERANCE
    update_baseline: bool = False
    device: str = DEFAULT_DEVICE
    disable: bool = False
    cache: bool = True
    cache_mb: float = DEFAULT_CACHE_MB
    sensitivity: bool = True
    sensitivity_layers: int = DEFAULT_SENSITIVITY_LAYERS
    latency_seconds: float = DEFAULT_LATENCY_SECONDS
    threads: int = DEFAULT_THREADS
    latency_tolerance: float = DEFAULT_LATENCY_TOLERANCE
    verify: bool = True
    sensitivity_seconds: float | None = None
    low_memory: str = DEFAULT_LOW_MEMORY
    low_memory_share: float = DEFAULT_LOW_MEMORY_SHARE


# (name, help, metavar or None for a flag)
OPTIONS: tuple[tuple[str, str, str | None], ...] = (
    ("compress-report", "write a JSON report of every compression check to PATH", "PATH"),
    ("compress-markdown", "write the compression report as a Markdown table to PATH", "PATH"),
    ("compress-no-summary", "hide the 'compression report' terminal section", None),
    (
        "compress-baseline",
        f"the stored baseline file (default: {DEFAULT_BASELINE} in the rootdir)",
        "PATH",
    ),
    (
        "compress-tolerance",
        "how far (absolute, in the metric's units) a compressed metric may fall below its "
        f"baseline (default: {DEFAULT_TOLERANCE})",
        "FLOAT",
    ),
    ("compress-update-baseline", "rewrite the baseline file from this run", None),
    (
        "compress-device",
        f"where models are evaluated: cpu, cuda or cuda:N (default: {DEFAULT_DEVICE})",
        "DEVICE",
    ),
    (
        "compress-disable",
        "skip the compression checks (marked tests and the compress fixture)",
        None,
    ),
    (
        "compress-no-cache",
        "measure every check, ignoring the results earlier runs stored in pytest's cache "
        "(the fresh results replace them)",
        None,
    ),
    (
        "compress-cache-mb",
        "keep each data fixture's batches in memory on the evaluation device up to this "
        f"many megabytes; larger data is streamed (default: {DEFAULT_CACHE_MB:g})",
        "MB",
    ),
    (
        "compress-no-sensitivity",
        "do not measure each layer alone when a check fails its accuracy budget",
        None,
    ),
    (
        "compress-sensitivity-layers",
        "when a check fails its accuracy budget, rank every layer it compresses by its "
        "output error (one short forward pass), then measure at most this many of them "
        "alone with the metric, one evaluation each, to name the most sensitive ones "
        f"(default: {DEFAULT_SENSITIVITY_LAYERS})",
        "N",
    ),
    (
        "compress-sensitivity-seconds",
        "when a check fails its accuracy budget, start measuring no further layer alone "
        "after this many seconds; the message says it stopped early (default: no limit)",
        "SECONDS",
    ),
    (
        "compress-no-verify",
        "do not verify each compressed model against its recipe's claims (distinct values "
        "per channel, exact zeros, N:M groups)",
        None,
    ),
    (
        "compress-low-memory",
        "auto, on or off: compress a shallow clone holding the compressed weights packed "
        "(dequantized as each layer runs) instead of a deep copy of the model; auto turns "
        "it on when the model's bytes exceed --compress-low-memory-share of the available "
        f"memory; the numbers are the same (default: {DEFAULT_LOW_MEMORY})",
        "MODE",
    ),
    (
        "compress-low-memory-share",
        "the share of the available memory above which a model's checks run in the "
        f"low-memory mode under --compress-low-memory=auto (default: "
        f"{DEFAULT_LOW_MEMORY_SHARE:g})",
        "FRACTION",
    ),
    (
        "compress-latency-seconds",
        "at most this many seconds of timing rounds per latency budget, when the ratio's "
        f"interval is not tight sooner (default: {DEFAULT_LATENCY_SECONDS:g})",
        "SECONDS",
    ),
    (
        "compress-latency-tolerance",
        "how far (relative) a latency ratio may grow above its baseline before the check "
        f"regresses, judged on its 95 percent interval (default: {DEFAULT_LATENCY_TOLERANCE:g})",
        "FRACTION",
    ),
    (
        "compress-threads",
        "threads for torch and the runtime while a latency budget is timed "
        f"(default: {DEFAULT_THREADS})",
        "N",
    ),
)


def add_options(parser: pytest.Parser) -> None:
    """Register every option of ``OPTIONS`` as a flag and as ini keys."""
    group = parser.getgroup("compress", "model compression checks (pytest-compress)")
    for name, help, metavar in OPTIONS:
        kind: dict[str, Any] = {"action": "store_true"} if metavar is None else {"metavar": metavar}
        # default None, so that "not on the command line" falls back to the ini key
        group.addoption(f"--{name}", dest=name.replace("-", "_"), default=None, help=help, **kind)
        ini_type: Literal["bool", "string"] = "bool" if metavar is None else "string"
        parser.addini(name, help=f"{help} (the --{name} option wins over this)", type=ini_type)
        # pytest's own ini keys use underscores (junit_family), so that spelling works too
        parser.addini(name.replace("-", "_"), help=f"same as {name}", type=ini_type)


def read_options(config: pytest.Config) -> Options:
    """The options, each from the command line if given there, else from the ini file."""
    layers = _number(config, "compress-sensitivity-layers", DEFAULT_SENSITIVITY_LAYERS)
    if layers < 1 or layers != int(layers):
        raise pytest.UsageError(
            "--compress-sensitivity-layers must be a whole number of layers, at least 1, "
            f"such as {DEFAULT_SENSITIVITY_LAYERS}; got "
            f"{_option(config, 'compress-sensitivity-layers')!r}"
        )
    threads = _number(config, "compress-threads", DEFAULT_THREADS)
    if threads < 1 or threads != int(threads):
        raise pytest.UsageError(
            f"--compress-threads must be a whole number of threads, at least 1; got "
            f"{_option(config, 'compress-threads')!r}"
        )
    low_memory = (_option(config, "compress-low-memory") or DEFAULT_LOW_MEMORY).strip().lower()
    if low_memory not in LOW_MEMORY_MODES:
        raise pytest.UsageError(
            f"--compress-low-memory must be one of {', '.join(LOW_MEMORY_MODES)}; got "
            f"{_option(config, 'compress-low-memory')!r}"
        )
    share = _number(config, "compress-low-memory-share", DEFAULT_LOW_MEMORY_SHARE)
    if not 0 < share <= 1:
        raise pytest.UsageError(
            "--compress-low-memory-share must be a fraction of the available memory, above "
            f"0 and at most 1, such as {DEFAULT_LOW_MEMORY_SHARE:g}; got "
            f"{_option(config, 'compress-low-memory-share')!r}"
        )
    return Options(
        report=_path(config, "compress-report"),
        markdown=_path(config, "compress-markdown"),
        summary=not _option(config, "compress-no-summary"),
        baseline=_path(config, "compress-baseline") or config.rootpath / DEFAULT_BASELINE,
        tolerance=_number(config, "compress-tolerance", DEFAULT_TOLERANCE),
        update_baseline=bool(_option(config, "compress-update-baseline")),
        device=_option(config, "compress-device") or DEFAULT_DEVICE,
        disable=bool(_option(config, "compress-disable")),
        cache=not _option(config, "compress-no-cache"),
        cache_mb=_number(
            config, "compress-cache-mb", DEFAULT_CACHE_MB, "(0 streams every data set)"
        ),
        sensitivity=not _option(config, "compress-no-sensitivity"),
        sensitivity_layers=int(layers),
        latency_seconds=_number(config, "compress-latency-seconds", DEFAULT_LATENCY_SECONDS),
        threads=int(threads),
        verify=not _option(config, "compress-no-verify"),
        sensitivity_seconds=_optional_number(config, "compress-sensitivity-seconds"),
        latency_tolerance=_number(config, "compress-latency-tolerance", DEFAULT_LATENCY_TOLERANCE),
        low_memory=low_memory,
        low_memory_share=share,
    )


def check_device(device: str) -> int | None:
    """The CUDA index of ``device`` (None for cpu); ``pytest.UsageError`` for another form.

    Whether that CUDA device exists is the check runner's to say: it needs torch.
    """
    match = _DEVICE_PATTERN.fullmatch(device)
    if match is None:
        raise pytest.UsageError(
            f"--compress-device={device!r}: expected cpu, cuda or cuda:N (e.g. cuda:0)"
        )
    return None if device == "cpu" else int(match[1] or 0)


def _number(config: pytest.Config, name: str, default: float, note: str = "") -> float:
    """A finite, non-negative number option; ``pytest.UsageError`` naming it otherwise."""
    text = _option(config, name)
    try:
        value = float(text) if text not in (None, "") else default
    except ValueError:
        value = float("nan")
    if not value >= 0 or value == float("inf"):
        example = f"{default:g} {note}".rstrip()
        raise pytest.UsageError(
            f"--{name} must be a non-negative number such as {example}, got {text!r}"
        )
    return value


def _optional_number(config: pytest.Config, name: str) -> float | None:
    """A non-negative number option, or None when it is not given."""
    if _option(config, name) in (None, ""):
        return None
    return _number(config, name, 0.0)


def _option(config: pytest.Config, name: str) -> Any:
    """The command-line value of ``--name`` if given, else the ini key ``name``."""
    value = config.getoption(name.replace("-", "_"))
    return value if value is not None else _ini(config, name)


def _ini(config: pytest.Config, name: str) -> Any:
    """The ini key ``name`` (``compress-report``) or its underscore twin (``compress_report``)."""
    return config.getini(name) or config.getini(name.replace("-", "_"))


def _path(config: pytest.Config, name: str) -> Path | None:
    # A command-line path is relative to where pytest was started, an ini path to the ini file.
    given = config.getoption(name.replace("-", "_"))
    if given:
        return Path(config.invocation_params.dir, given)
    value = _ini(config, name)
    if not value:
        return None
    base = config.inipath.parent if config.inipath else config.rootpath
    return Path(base, value)
