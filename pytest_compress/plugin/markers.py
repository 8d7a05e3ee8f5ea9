"""The ``compress`` marker's API, as a typed function, and the checking of its arguments.

``compress`` below *is* the marker: its signature is the list of arguments
``@pytest.mark.compress(...)`` accepts, and the ``markers`` ini line is generated from
it (``MARKER_LINE``), so the documentation cannot drift from the code. Calling it
validates the arguments and returns a ``CheckRequest``; every problem is a
``MarkerError`` that names the argument and its valid forms. No pytest import here: the
plugin turns a ``MarkerError`` into a ``pytest.UsageError`` naming the test.
"""

from __future__ import annotations

import difflib
import inspect
import math
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from ..budgets import BUDGET_NAMES, Budgets
from ..units import SIZE_FORMS, parse_size

if TYPE_CHECKING:  # the specs import torch; the marker line must not
    from ..engine.specs import PruneSpec, QuantSpec

DEFAULT_MODEL_FIXTURE = "compress_model"
DEFAULT_DATA_FIXTURE = "compress_data"
DEFAULT_METRIC_FIXTURE = "compress_metric"
DEFAULT_CALIBRATION_FIXTURE = "compress_calibration_data"
DEFAULT_RECOVER_DATA_FIXTURE = "compress_train_data"


class MarkerError(ValueError):
    """An invalid ``compress`` argument; ``argument`` names it."""

    def __init__(self, argument: str, message: str) -> None:
        super().__init__(f"{argument}: {message}")
        self.argument = argument


@dataclass(frozen=True)
class CheckRequest:
    """A validated compression check: the recipe, the budgets and where the model comes from."""

    quantize: QuantSpec | None
    prune: PruneSpec | None
    budgets: Budgets
    model: str = DEFAULT_MODEL_FIXTURE
    data: str = DEFAULT_DATA_FIXTURE
    higher_is_better: bool = True
    metric: str = DEFAULT_METRIC_FIXTURE
    calibration_data: str = DEFAULT_CALIBRATION_FIXTURE
    # How the plugin adjusts the recipe from evaluation (issue 6): the knob to search,
    # the layers kept float ("auto" or patterns), the recovery fixture and its data.
    search: str | None = None
    keep_float: str | tuple[str, ...] | None = None
    recover: str | None = None
    recover_data: str = DEFAULT_RECOVER_DATA_FIXTURE

    def trial(self, quantize: QuantSpec | None, prune: PruneSpec | None) -> CheckRequest:
        """This check with a concrete recipe, as one evaluation of a search or of keep_float."""
        return replace(self, quantize=quantize, prune=prune, search=None, keep_float=None)


def compress(
    *,
    quantize: QuantSpec | str | None = None,
    prune: PruneSpec | float | str | None = None,
    max_accuracy_drop: float | None = None,
    max_relative_drop: float | None = None,
    max_size_ratio: float | None = None,
    max_size: int | str | None = None,
    min_sparsity: float | None = None,
    model: str = DEFAULT_MODEL_FIXTURE,
    data: str = DEFAULT_DATA_FIXTURE,
    higher_is_better: bool = True,
    metric: str = DEFAULT_METRIC_FIXTURE,
    calibration_data: str = DEFAULT_CALIBRATION_FIXTURE,
    search: str | None = None,
    keep_float: str | list[str] | tuple[str, ...] | None = None,
    recover: str | None = None,
    recover_data: str = DEFAULT_RECOVER_DATA_FIXTURE,
) -> CheckRequest:
    """Compress the model fixture and fail the test when a budget breaks.

    ``metric`` and ``calibration_data`` name optional fixtures: the metric (top-1
    accuracy when ``compress_metric`` is not defined) and the activation calibration
    batches (``compress_calibration_data`` for the default data fixture, else the data).
    ``search`` ("sparsity", "threshold" or "bits") finds the most compression of that
    knob within the budgets; ``keep_float`` ("auto" or module-name patterns) leaves
    layers uncompressed; ``recover`` names a fixture giving ``(model, data) -> model``,
    run on the compressed copy with the batches of the ``recover_data`` fixture.
    """
    quant_spec, prune_spec = recipe(quantize, prune, searched=search is not None)
    budgets = make_budgets(
        max_accuracy_drop=max_accuracy_drop,
        max_relative_drop=max_relative_drop,
        max_size_ratio=max_size_ratio,
        max_size=max_size,
        min_sparsity=min_sparsity,
    )
    kind = search_kind(search, quant_spec, prune_spec, budgets)
    if not budgets:
        raise MarkerError(
            "budget",
            "none given, so the check cannot fail; give at least one of " + ", ".join(BUDGET_NAMES),
        )
    return CheckRequest(
        quant_spec,
        prune_spec,
        budgets,
        model=fixture_name(model, "model"),
        data=fixture_name(data, "data"),
        higher_is_better=flag(higher_is_better, "higher_is_better"),
        metric=fixture_name(metric, "metric"),
        calibration_data=fixture_name(calibration_data, "calibration_data"),
        search=kind,
        keep_float=keep_float_value(keep_float),
        recover=None if recover is None else fixture_name(recover, "recover"),
        recover_data=fixture_name(recover_data, "recover_data"),
    )


ARGUMENTS = tuple(inspect.signature(compress).parameters)
MARKER_LINE = (
    "compress("
    + ", ".join(
        f"{name}={parameter.default!r}"
        for name, parameter in inspect.signature(compress).parameters.items()
    )
    + "): quantize and/or prune the model fixture, measure it on the data fixture "
    "and fail the test when a budget breaks (pytest-compress)"
)


def parse_marker(args: tuple[Any, ...], kwargs: dict[str, Any]) -> CheckRequest:
    """Validate a ``compress`` marker's arguments; ``MarkerError`` on the first problem."""
    if args:
        raise MarkerError(
            "positional arguments",
            f"the marker takes keyword arguments only, got {args!r}; "
            'write e.g. compress(quantize="int8", max_accuracy_drop=0.01)',
        )
    for name in kwargs:
        if name not in ARGUMENTS:
            close = difflib.get_close_matches(name, ARGUMENTS, n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise MarkerError(
                name, f"unknown argument{hint}; valid arguments: {', '.join(ARGUMENTS)}"
            )
    return compress(**kwargs)


def call_request(
    model: Any,
    data: Any,
    quantize: Any,
    prune: Any,
    higher_is_better: Any,
    budgets: dict[str, Any],
    *,
    search: Any = None,
    keep_float: Any = None,
    recover: Any = None,
    recover_data: Any = DEFAULT_RECOVER_DATA_FIXTURE,
) -> CheckRequest:
    """Validate the arguments of the ``compress`` fixture's callable.

    As the marker, except that budgets are optional (a search still needs one) and
    ``model`` / ``data`` may be objects rather than fixture names. An unknown keyword is
    a ``TypeError``, as for any Python call; a bad value a ``ValueError`` naming the
    argument.
    """
    for name in budgets:
        if name not in BUDGET_NAMES:
            raise TypeError(
                f"compress() got an unexpected keyword argument {name!r}; budgets are "
                + ", ".join(BUDGET_NAMES)
            )
    try:
        quant_spec, prune_spec = recipe(quantize, prune, searched=search is not None)
        made = make_budgets(**budgets)
        return CheckRequest(
            quant_spec,
            prune_spec,
            made,
            model=model if isinstance(model, str) else DEFAULT_MODEL_FIXTURE,
            data=data if isinstance(data, str) else DEFAULT_DATA_FIXTURE,
            higher_is_better=flag(higher_is_better, "higher_is_better"),
            search=search_kind(search, quant_spec, prune_spec, made),
            keep_float=keep_float_value(keep_float),
            recover=None if recover is None else fixture_name(recover, "recover"),
            recover_data=fixture_name(recover_data, "recover_data"),
        )
    except MarkerError as error:
        raise ValueError(f"compress(): {error}") from None


def call_label(check: CheckRequest, model: Any, data: Any) -> str:
    """The recipe in words, plus the model and data when the call named its own."""
    from ..engine.specs import describe_recipe

    label = describe_recipe(check.quantize, check.prune)
    if check.search is not None:  # the fixed part, then the knob the search chooses
        fixed = "" if check.quantize is None and check.prune is None else f"{label} + "
        label = f"{fixed}search {check.search}"
    if model is None and data is None:
        return label

    # a name stands for itself (None for the default fixture), an object for its type
    def name(given: Any, default: str) -> str:
        if given is None or isinstance(given, str):
            return given or default
        return type(given).__name__

    model_label, data_label = name(model, check.model), name(data, check.data)
    return f"{label} on {model_label}/{data_label}"


def search_kind(
    search: Any, quantize: QuantSpec | None, prune: PruneSpec | None, budgets: Budgets
) -> str | None:
    """The search kind, validated against the fixed part of the recipe and the budgets."""
    if search is None:
        return None
    from ..tuning.search import check_search

    try:
        return check_search(search, quantize=quantize, prune=prune, budgets=budgets)
    except ValueError as error:
        raise MarkerError("search", str(error)) from None


def keep_float_value(value: Any) -> str | tuple[str, ...] | None:
    if value is None:
        return None
    from ..tuning.keep_float import check_keep_float

    try:
        return check_keep_float(value)
    except ValueError as error:
        raise MarkerError("keep_float", str(error)) from None


def recipe(
    quantize: Any, prune: Any, *, searched: bool = False
) -> tuple[QuantSpec | None, PruneSpec | None]:
    """The quantization and pruning specs from specs or shorthands.

    At least one is needed, unless a search chooses the recipe (``searched``).
    """
    from ..engine.specs import as_prune_spec, as_quant_spec

    try:
        quant_spec = as_quant_spec(quantize)
    except ValueError as error:
        raise MarkerError("quantize", str(error)) from None
    try:
        prune_spec = as_prune_spec(prune)
    except ValueError as error:
        raise MarkerError("prune", str(error)) from None
    if quant_spec is None and prune_spec is None and not searched:
        raise MarkerError(
            "quantize/prune",
            'nothing to compress; give quantize= (e.g. "int8") and/or prune= (e.g. 0.8), '
            'or search= (e.g. "sparsity")',
        )
    return quant_spec, prune_spec


def make_budgets(
    *,
    max_accuracy_drop: Any = None,
    max_relative_drop: Any = None,
    max_size_ratio: Any = None,
    max_size: Any = None,
    min_sparsity: Any = None,
) -> Budgets:
    """``Budgets`` from raw values, each checked for type and range."""
    return Budgets(
        max_accuracy_drop=_non_negative(
            max_accuracy_drop,
            "max_accuracy_drop",
            "in the metric's units, e.g. 0.01 = 1 percentage point of accuracy",
        ),
        max_relative_drop=_non_negative(
            max_relative_drop, "max_relative_drop", "a fraction of the float metric, e.g. 0.02"
        ),
        max_size_ratio=_non_negative(
            max_size_ratio, "max_size_ratio", "compressed bytes / float bytes, e.g. 0.3"
        ),
        max_size=_size(max_size),
        min_sparsity=_sparsity(min_sparsity),
    )


def fixture_name(value: Any, argument: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise MarkerError(argument, f"must be the name of a fixture (a string), got {value!r}")
    return value


def flag(value: Any, argument: str) -> bool:
    if not isinstance(value, bool):
        raise MarkerError(argument, f"must be True or False, got {value!r}")
    return value


def _number(value: Any, argument: str, forms: str) -> float | None:
    if value is None:
        return None
    # bool is an int subclass, and True as a budget is a mistake, not 1.0
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        raise MarkerError(argument, f"must be a number ({forms}), got {value!r}")
    if math.isinf(value):
        raise MarkerError(argument, f"must be finite ({forms}), got {value!r}")
    return float(value)


def _non_negative(value: Any, argument: str, forms: str) -> float | None:
    number = _number(value, argument, forms)
    if number is not None and number < 0:
        raise MarkerError(argument, f"must not be negative ({forms}), got {value!r}")
    return number


def _size(value: Any) -> int | None:
    if value is None:
        return None
    try:
        return parse_size(value)
    except ValueError:
        raise MarkerError(
            "max_size", f"must be {SIZE_FORMS} and not negative, got {value!r}"
        ) from None


def _sparsity(value: Any) -> float | None:
    forms = "a fraction of zero weights between 0 and 1, e.g. 0.8"
    number = _number(value, "min_sparsity", forms)
    if number is not None and not 0 <= number <= 1:
        raise MarkerError("min_sparsity", f"must be {forms}, got {value!r}")
    return number
