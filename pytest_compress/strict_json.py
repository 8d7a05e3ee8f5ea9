"""Standard JSON for every file the plugin writes: no bare ``NaN`` or ``Infinity``.

Python's ``json`` writes non-finite floats as ``NaN``, ``Infinity`` and ``-Infinity``,
which standard parsers (``JSON.parse``, jq, Go) reject. Here a non-finite number is
written as ``null``, and the object holding it names what it was in ``"non_finite"``:
``{"compressed_metric": null, "non_finite": {"compressed_metric": "NaN"}}``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

NON_FINITE_KEY = "non_finite"
_NAMES = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}


def non_finite_name(value: float) -> str:
    """``NaN``, ``Infinity`` or ``-Infinity``: the name JSON extensions give ``value``."""
    if math.isnan(value):
        return "NaN"
    return "Infinity" if value > 0 else "-Infinity"


def encoded(value: Any) -> Any:
    """``value`` with every non-finite float replaced by null plus its name (see above)."""
    if isinstance(value, Mapping):
        result: dict[str, Any] = {}
        reasons: dict[str, str] = dict(value.get(NON_FINITE_KEY) or {})
        for key, item in value.items():
            if key == NON_FINITE_KEY:
                continue
            if isinstance(item, float) and not math.isfinite(item):
                result[key] = None
                reasons[key] = non_finite_name(item)
            elif isinstance(item, (list, tuple)):
                result[key] = [_element(item, index, key, reasons) for index in range(len(item))]
            else:
                result[key] = encoded(item)
        if reasons:
            result[NON_FINITE_KEY] = reasons
        return result
    if isinstance(value, (list, tuple)):
        return [encoded(item) for item in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None  # no object to hold the reason: only a bare top-level list could get here
    return value


def _element(items: Any, index: int, key: str, reasons: dict[str, str]) -> Any:
    item = items[index]
    if isinstance(item, float) and not math.isfinite(item):
        reasons[f"{key}[{index}]"] = non_finite_name(item)
        return None
    return encoded(item)


def decoded_number(value: Any, reasons: Mapping[str, Any] | None, key: str) -> Any:
    """The number stored under ``key``: a null that ``reasons`` names becomes it again."""
    if value is None and reasons is not None and reasons.get(key) in _NAMES:
        return _NAMES[reasons[key]]
    return value


def dumps(document: Any, **options: Any) -> str:
    """``json.dumps`` of ``encoded(document)``; raises rather than write a bare NaN."""
    return json.dumps(encoded(document), allow_nan=False, **options)


def loads(text: str) -> Any:
    """``json.loads`` that rejects ``NaN``, ``Infinity`` and numbers too large for a float.

    Raises ``NonFiniteError`` (a ``ValueError``) naming the offending token.
    """
    return json.loads(text, parse_constant=_reject, parse_float=_finite_float)


class NonFiniteError(ValueError):
    """The JSON text holds a non-finite number, which standard JSON cannot express."""


def _reject(token: str) -> Any:
    raise NonFiniteError(f"{token} (JSON has no such number)")


def _finite_float(token: str) -> float:
    value = float(token)
    if not math.isfinite(value):
        raise NonFiniteError(f"{token} (too large for a float: it reads as {value})")
    return value


def decoded(value: Any) -> Any:
    """The inverse of ``encoded``: each null an object's ``"non_finite"`` names is a float again."""
    if isinstance(value, Mapping):
        reasons = value.get(NON_FINITE_KEY)
        reasons = reasons if isinstance(reasons, Mapping) else {}
        result = {}
        for key, item in value.items():
            if key == NON_FINITE_KEY and reasons:
                continue
            if isinstance(item, list):
                result[key] = [
                    decoded_number(element, reasons, f"{key}[{index}]")
                    if element is None
                    else decoded(element)
                    for index, element in enumerate(item)
                ]
            else:
                result[key] = decoded_number(decoded(item), reasons, key)
        return result
    if isinstance(value, list):
        return [decoded(item) for item in value]
    return value
