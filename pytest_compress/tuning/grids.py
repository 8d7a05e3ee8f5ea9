"""The search grids, torch-free: what each searched knob may be, and how a setting reads.

Reports, the stored baseline and marker validation need these without importing torch,
so they live apart from ``search.py``, which runs the search. Each grid runs from the
least to the most compression:

- ``"sparsity"``: global magnitude pruning amounts 0.01, 0.02, ..., 0.99;
- ``"threshold"``: alpha of magnitude threshold pruning ``|w| < alpha * max|w|``, on a
  log scale from 1e-4 to 1 with 63 steps per decade, each rounded to 3 significant
  digits (neighbours a factor ``10**(1/63)`` = 1.037 apart);
- ``"bits"``: weight bits 8, 7, ..., 2.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

from ..budgets import BUDGETS, Budgets
from ..engine.specs import PruneSpec, QuantSpec
from ..errors import SpecError

SEARCH_KINDS = ("sparsity", "threshold", "bits")
MAX_EVALUATIONS = 8
THRESHOLD_STEPS_PER_DECADE = 63
THRESHOLD_MIN, THRESHOLD_MAX = 1e-4, 1.0

# Each grid runs from the least to the most compression.
SPARSITY_GRID: tuple[float, ...] = tuple(k / 100 for k in range(1, 100))
THRESHOLD_GRID: tuple[float, ...] = tuple(
    float(f"{10 ** (-4 + i / THRESHOLD_STEPS_PER_DECADE):.3g}")
    for i in range(4 * THRESHOLD_STEPS_PER_DECADE + 1)
)
BITS_GRID: tuple[int, ...] = (8, 7, 6, 5, 4, 3, 2)
GRIDS: dict[str, tuple[float, ...] | tuple[int, ...]] = {
    "sparsity": SPARSITY_GRID,
    "threshold": THRESHOLD_GRID,
    "bits": BITS_GRID,
}
# How far (in grid steps) a later run may fall short of a recorded search result before
# the baseline gate calls it a regression: one step absorbs float noise across machines
# for the fine grids; a bit width is never noise.
DEFAULT_TOLERANCE_STEPS = {"sparsity": 1, "threshold": 1, "bits": 0}
# How many layers a failing check measures alone with its metric (an evaluation each):
# the proxy's top three, the three the message names by their measured drops. Each costs
# an evaluation, and a failing suite must stay within twice a passing one; a fourth or
# fifth (room for the proxy to misorder) put that over 2 (README, "Sensitivity").
DEFAULT_SENSITIVITY_LAYERS = 3
# The budgets more compression can break: a search needs one, or it would always answer
# the end of its grid.
DAMAGE_BUDGETS = tuple(
    name for name, b in BUDGETS.items() if not b.eased_by_compression and not b.needs_runtime
)


def max_evaluations(kind: str) -> int:
    """The most evaluations ``search(kind, ...)`` makes: ``ceil(log2(len(grid) + 1))``."""
    return math.ceil(math.log2(len(GRIDS[check_kind(kind)]) + 1))


def check_kind(search: object) -> str:
    """``search`` itself when it names a search kind; ``ValueError`` naming the valid ones."""
    if not isinstance(search, str) or search not in SEARCH_KINDS:
        valid = ", ".join(repr(kind) for kind in SEARCH_KINDS)
        raise SpecError(f"search must be one of {valid}; got {search!r}")
    return search


def check_search(
    search: object,
    *,
    quantize: QuantSpec | None = None,
    prune: PruneSpec | None = None,
    budgets: Budgets | Mapping[str, Any] | Iterable[str] | None = None,
) -> str:
    """Validate a search request as the marker will (at collection); return the kind.

    Refused, each with a ``ValueError`` naming the argument and the valid forms:

    - an unknown kind;
    - a fixed part that the search would overwrite: ``search="sparsity"`` or
      ``"threshold"`` with a ``prune`` that prunes weights (an activation-only
      ``PruneSpec(activation_threshold=...)`` may stay), ``search="bits"`` with a float
      ``quantize`` (an integer one is the template whose bits are searched);
    - when ``budgets`` is given (a ``Budgets``, a mapping of budget names to values, or
      budget names): no budget that more compression can break (``max_accuracy_drop``
      or ``max_relative_drop``). Size and sparsity budgets alone only push towards more
      compression, so the search would always answer the end of its grid.
    """
    kind = check_kind(search)
    quant_spec, prune_spec = quantize, prune
    if kind in ("sparsity", "threshold") and prune_spec is not None and prune_spec.prunes_weights:
        raise SpecError(
            f"prune={prune_spec.describe()!r} conflicts with search={kind!r}, which chooses "
            "the weight pruning itself; drop prune= (an activation-only "
            "PruneSpec(activation_threshold=...) may stay) or drop search="
        )
    if kind == "bits" and quant_spec is not None and quant_spec.format != "int":
        raise SpecError(
            f"quantize={quant_spec.describe()!r} is a float format, and search='bits' "
            "searches integer weight bits (8 down to 2) of the quantize given as a template "
            '(e.g. "int4-g128-gptq"); drop quantize= or drop search='
        )
    if budgets is not None:
        names = _budget_names(budgets)
        if not any(name in DAMAGE_BUDGETS for name in names):
            got = f"only {', '.join(names)}" if names else "no budget"
            raise SpecError(
                f"search={kind!r} needs a budget that more compression can break: "
                f"{' or '.join(DAMAGE_BUDGETS)}; got {got}"
            )
    return kind


def _budget_names(budgets: Budgets | Mapping[str, Any] | Iterable[str]) -> list[str]:
    if isinstance(budgets, Budgets):
        return list(budgets.given())
    if isinstance(budgets, Mapping):
        return [name for name, value in budgets.items() if value is not None]
    return list(budgets)


def format_setting(kind: str, setting: float | int | None) -> str:
    """A searched setting as reports show it: ``0.83``, ``0.0123``, ``4``."""
    if setting is None:
        return "-"
    if kind == "sparsity":
        return f"{setting:.2f}"
    if kind == "threshold":
        return f"{setting:.3g}"
    return str(setting)


def setting_phrase(kind: str, setting: float | int) -> str:
    if kind == "bits":
        return f"{setting} bits"
    if kind == "threshold":
        return f"alpha {format_setting(kind, setting)}"
    return f"sparsity {format_setting(kind, setting)}"


def grid_position(kind: str, setting: float | int) -> int:
    """The index of the grid setting nearest ``setting`` (higher = more compression)."""
    grid = GRIDS[check_kind(kind)]
    if kind == "threshold":
        if setting <= 0:
            return 0
        return min(range(len(grid)), key=lambda i: abs(math.log(grid[i] / setting)))
    return min(range(len(grid)), key=lambda i: abs(grid[i] - setting))


def less_compression(
    kind: str,
    found: float | int | None,
    recorded: float | int | None,
    *,
    tolerance_steps: int | None = None,
) -> bool:
    """Whether a search found less compression than a recorded one, beyond the tolerance.

    The tolerance is in grid steps (default ``DEFAULT_TOLERANCE_STEPS``: one step of
    sparsity or alpha, no bit). Nothing found against a recorded setting is less;
    nothing recorded is never beaten.
    """
    kind = check_kind(kind)
    steps = DEFAULT_TOLERANCE_STEPS[kind] if tolerance_steps is None else tolerance_steps
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise SpecError(f"tolerance_steps must be an int >= 0, got {tolerance_steps!r}")
    if recorded is None:
        return False
    if found is None:
        return True
    return grid_position(kind, found) < grid_position(kind, recorded) - steps
