"""Sizes, fractions and ratios as people write and read them: ``"2 MB"``, ``80.0%``, ``0.27``.

Parsing is exact (``Decimal``), so ``"1.1 kB"`` is 1100 bytes and not 1100.0000000000002.
Formatting widens the precision of two numbers shown side by side until they differ,
so a failure never reads ``2.0 pp > 2.0 pp allowed``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from decimal import Decimal, InvalidOperation

# Decimal units as the SI writes them and binary units as the IEC writes them; matched
# case-insensitively, and always bytes (nobody budgets a model in bits).
SIZE_UNITS = {
    "b": 1,
    "kb": 1000,
    "mb": 1000**2,
    "gb": 1000**3,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
}
SIZE_FORMS = (
    'an int of bytes, or a string such as "2 MB", "512 kB", "1.5 MiB" '
    "(units B, kB, MB, GB, KiB, MiB, GiB)"
)
_SIZE_PATTERN = re.compile(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*([a-zA-Z]*)\s*")
# Durations in seconds; "us" for a micro sign nobody can type.
DURATION_UNITS = {"s": 1.0, "ms": 1e-3, "us": 1e-6, "\u00b5s": 1e-6, "\u03bcs": 1e-6}
DURATION_FORMS = 'a number of seconds, or a string such as "5 ms", "250 us", "1.5 s"'
_DURATION_PATTERN = re.compile(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*(\S*)\s*")
_MAX_EXTRA_DIGITS = 6


def parse_size(value: object) -> int:
    """Bytes from an int of bytes or a string such as ``"2 MB"``; ``ValueError`` otherwise.

    A fractional byte count (``"1.0005 kB"``) is rounded down: a size budget is a ceiling.
    """
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise ValueError(f"expected {SIZE_FORMS}, got {value!r}")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"a size must not be negative, got {value}")
        return value
    match = _SIZE_PATTERN.fullmatch(value)
    unit = match[2].lower() if match else None
    if match is None or (unit and unit not in SIZE_UNITS):
        raise ValueError(f"expected {SIZE_FORMS}, got {value!r}")
    try:
        number = Decimal(match[1])
    except InvalidOperation as error:  # the pattern admits only digits, but be explicit
        raise ValueError(f"expected {SIZE_FORMS}, got {value!r}") from error
    return int(number * SIZE_UNITS[unit or "b"])


def parse_duration(value: object) -> float:
    """Seconds from a number of seconds or a string such as ``"5 ms"``; ``ValueError`` otherwise."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ValueError(f"expected {DURATION_FORMS}, got {value!r}")
    if isinstance(value, str):
        match = _DURATION_PATTERN.fullmatch(value)
        unit = match[2].lower() if match else None
        if match is None or (unit and unit not in DURATION_UNITS):
            raise ValueError(f"expected {DURATION_FORMS}, got {value!r}")
        return float(match[1]) * DURATION_UNITS[unit or "s"]
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"a duration must be a finite number of seconds >= 0, got {value!r}")
    return float(value)


def format_duration(seconds: float) -> str:
    """``12.3 ms``: milliseconds with one decimal below a second, else seconds."""
    return f"{seconds * 1000:.1f} ms" if seconds < 1 else f"{seconds:.2f} s"


def format_size(size: float, extra_digits: int = 0) -> str:
    """``246.1 kB``: decimal units with one decimal (more when asked), whole bytes below 1 kB."""
    if size < 1000:
        return f"{size:.0f} B"
    for unit in ("kB", "MB", "GB"):
        size /= 1000
        if size < 1000 or unit == "GB":
            break
    return f"{size:.{1 + extra_digits}f} {unit}"


def format_fraction(value: float, extra_digits: int = 0) -> str:
    """A fraction as a percentage: ``80.0%`` (relative drops, sparsity)."""
    if not math.isfinite(value):
        return f"{value}"
    return f"{value * 100:.{1 + extra_digits}f}%"


def format_ratio(value: float, extra_digits: int = 0) -> str:
    """A size ratio: ``0.27``."""
    return f"{value:.{2 + extra_digits}f}"


def distinct(first: float, second: float, render: Callable[[float, int], str]) -> tuple[str, str]:
    """``first`` and ``second`` rendered with the least precision that tells them apart.

    Equal values stay at the default precision; values that differ only beyond it get
    more digits (up to six more), so a broken budget never shows two equal numbers.
    Values within a billionth of each other count as equal: stored baselines keep ten
    significant digits.
    """
    same = math.isclose(first, second, rel_tol=1e-9, abs_tol=1e-12)
    for extra in range(_MAX_EXTRA_DIGITS + 1):
        a, b = render(first, extra), render(second, extra)
        if a != b or same:
            return a, b
    return a, b
