"""One check, parsed: the recipe, the budgets and the adjustments; and what it runs on.

The plugin turns a marker or a ``compress(...)`` call into a ``Check`` once, at
collection or at the call, and resolves its fixtures into ``CheckInputs``; everything
below takes these typed objects and never re-reads strings. No torch and no pytest
here, so the plugin can import this when it loads.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from ..budgets import Budgets
from ..engine.specs import PruneSpec, QuantSpec, describe_recipe
from ..errors import SpecError

KEEP_FLOAT_AUTO = "auto"
# Check.runtime of a check deployed by the user's compressor fixture (compressor=).
COMPRESSOR = "compressor"
KEEP_FLOAT_FORMS = '"auto" or module-name patterns such as ["fc1", "features.*"]'


@dataclass(frozen=True)
class Recipe:
    """What to do to the model: quantize, prune, or both (None: not that step)."""

    quantize: QuantSpec | None = None
    prune: PruneSpec | None = None

    def describe(self) -> str:
        """``int4 per-channel + prune 80% (global, magnitude)``."""
        return describe_recipe(self.quantize, self.prune)

    @property
    def calibrates(self) -> bool:
        """Whether the recipe observes activation ranges on calibration data."""
        return self.quantize is not None and self.quantize.needs_calibration


@dataclass(frozen=True)
class Adjustments:
    """How the recipe is adjusted from evaluation.

    - ``search``: the knob whose most compression within the budgets is found
      (``"sparsity"``, ``"threshold"`` or ``"bits"``), or None.
    - ``keep_float``: ``"auto"`` (keep the most sensitive layers float until the budgets
      hold), module-name patterns kept float, or None.
    """

    search: str | None = None
    keep_float: str | tuple[str, ...] | None = None

    @property
    def auto_keep_float(self) -> bool:
        return self.keep_float == KEEP_FLOAT_AUTO

    @property
    def kept_float(self) -> tuple[str, ...]:
        """The patterns kept float by name (none for ``"auto"``)."""
        return self.keep_float if isinstance(self.keep_float, tuple) else ()


@dataclass(frozen=True)
class Check:
    """A parsed check: the recipe, the budgets it is held to, and its adjustments."""

    recipe: Recipe
    budgets: Budgets = field(default_factory=Budgets)
    adjustments: Adjustments = field(default_factory=Adjustments)
    higher_is_better: bool = True
    # "simulate" (fake quantization in eager PyTorch), a real runtime that deploys it, or
    # COMPRESSOR: the user's compressor fixture deploys it (the recipe, if any, is simulated).
    runtime: str = "simulate"
    # the recipe-invariant gate: the compressed model is verified against the recipe
    verify: bool = True

    def at(self, recipe: Recipe) -> Check:
        """This check with a concrete recipe: one evaluation of a search or of keep_float."""
        return replace(self, recipe=recipe, adjustments=Adjustments())


@dataclass(frozen=True)
class Recovery:
    """A recovery step for the compressed copy: ``fn(model, data) -> model`` and its data.

    ``data`` is the user's training batches, never the evaluation data: a model
    fine-tuned on what it is then measured on would look better than it is.
    """

    fn: Any
    data: Any


@dataclass(frozen=True)
class CheckInputs:
    """What a check runs on, resolved by the caller (the plugin, from fixtures).

    Labels name each object in reports and key the session's memos (a fixture's name,
    or ``<TypeName>`` for an object passed directly). ``metric`` None is top-1 accuracy;
    ``calibration`` None calibrates on ``data``.
    """

    model: Any
    data: Any
    model_label: str
    data_label: str
    metric: Any = None
    metric_label: str = "metric"
    calibration: Any = None
    calibration_label: str = "calibration data"
    recovery: Recovery | None = None
    compressor: Any = None
    compressor_label: str = "compressor"


def check_keep_float(value: object) -> str | tuple[str, ...]:
    """``"auto"`` or a tuple of patterns; ``SpecError`` naming ``keep_float`` otherwise."""
    if isinstance(value, str) and value:
        return KEEP_FLOAT_AUTO if value == KEEP_FLOAT_AUTO else (value,)
    if (
        isinstance(value, (list, tuple))
        and value
        and all(isinstance(pattern, str) and pattern for pattern in value)
    ):
        return tuple(value)
    raise SpecError(f"keep_float must be {KEEP_FLOAT_FORMS}; got {value!r}")
