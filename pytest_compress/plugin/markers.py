"""The ``compress`` marker's API, and the parsing of its arguments into a typed request.

``MARKER_SIGNATURE`` *is* the marker: one table of parameters (the recipe, every budget
of the registry in ``budgets.py``, the fixtures, the adjustments). The ``markers`` ini
line is generated from it (``MARKER_LINE``), so the documentation cannot drift from the
code, and a budget added to the registry appears here by itself. ``parse_marker`` and
``call_request`` (the ``compress`` fixture's callable) turn arguments into a
``CheckRequest`` once: a ``Check`` for the layers below, plus the fixture names, which
stay in the plugin. Every problem is a ``MarkerError`` naming the argument and its
valid forms; the plugin turns it into a ``pytest.UsageError`` naming the test.
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..budgets import BUDGET_NAMES, BUDGETS, Budgets
from ..checks.request import COMPRESSOR, Adjustments, Check, Recipe, check_keep_float
from ..engine.specs import PruneSpec, QuantSpec, as_prune_spec, as_quant_spec
from ..metrics import BuiltinName, MetricKind, builtin_name
from ..runtimes.registry import check_runtime, missing_extra, unsupported
from ..tuning.grids import check_search

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
class Fixtures:
    """The fixtures a check reads its inputs from, by name."""

    model: str = DEFAULT_MODEL_FIXTURE
    data: str = DEFAULT_DATA_FIXTURE
    metric: str = DEFAULT_METRIC_FIXTURE
    calibration_data: str = DEFAULT_CALIBRATION_FIXTURE
    recover: str | None = None
    recover_data: str = DEFAULT_RECOVER_DATA_FIXTURE
    compressor: str | None = None


@dataclass(frozen=True)
class CheckRequest:
    """A validated marker or call: the ``Check`` and the fixtures it runs on."""

    check: Check
    fixtures: Fixtures = Fixtures()
    # Objects a compress(...) call gave for fixture arguments (model=, metric=...), by name.
    given: Mapping[str, Any] = field(default_factory=dict, compare=False, hash=False)

    @property
    def recipe(self) -> Recipe:
        return self.check.recipe

    @property
    def budgets(self) -> Budgets:
        return self.check.budgets


def _keyword(name: str, default: Any, annotation: str) -> inspect.Parameter:
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default,
                             annotation=annotation)  # fmt: skip


MARKER_SIGNATURE = inspect.Signature(
    [
        _keyword("quantize", None, "QuantSpec | str | None"),
        _keyword("prune", None, "PruneSpec | float | str | None"),
        *(_keyword(name, None, "float | int | str | None") for name in BUDGET_NAMES),
        _keyword("model", DEFAULT_MODEL_FIXTURE, "str"),
        _keyword("data", DEFAULT_DATA_FIXTURE, "str"),
        _keyword("higher_is_better", True, "bool"),
        _keyword("metric", DEFAULT_METRIC_FIXTURE, "str"),
        _keyword("calibration_data", DEFAULT_CALIBRATION_FIXTURE, "str"),
        _keyword("runtime", "simulate", "str"),
        _keyword("compressor", None, "str | None"),
        _keyword("verify", True, "bool"),
        _keyword("search", None, "str | None"),
        _keyword("keep_float", None, "str | list[str] | tuple[str, ...] | None"),
        _keyword("recover", None, "str | None"),
        _keyword("recover_data", DEFAULT_RECOVER_DATA_FIXTURE, "str"),
    ]
)
ARGUMENTS = tuple(MARKER_SIGNATURE.parameters)
MARKER_LINE = (
    "compress("
    + ", ".join(f"{name}={p.default!r}" for name, p in MARKER_SIGNATURE.parameters.items())
    + "): quantize and/or prune the model fixture, measure it on the data fixture "
    "and fail the test when a budget breaks (pytest-compress)"
)


# How alike a misspelt argument must be to get a "did you mean" (max_acc_drop is; a budget
# that does not exist, such as max_cosine_drop, gets the list of arguments instead).
HINT_CUTOFF = 0.75
# The arguments that name a fixture in the marker; the callable also takes objects there.
FIXTURE_ARGUMENTS = (
    "model",
    "data",
    "metric",
    "calibration_data",
    "recover",
    "recover_data",
    "compressor",
)
# The compress fixture's callable takes what the marker takes, from the same table: model
# and data may come first by position, and every fixture argument defaults to None (the
# marker's default fixture).
CALL_SIGNATURE = inspect.Signature(
    [
        *(
            inspect.Parameter(
                name, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=None, annotation="Any"
            )  # fmt: skip
            for name in ("model", "data")
        ),
        *(
            parameter.replace(default=None, annotation="Any")
            if name in FIXTURE_ARGUMENTS
            else parameter
            for name, parameter in MARKER_SIGNATURE.parameters.items()
            if name not in ("model", "data")
        ),
    ],
    return_annotation="CompressionResult",
)


def parse_marker(args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> CheckRequest:
    """Validate a ``compress`` marker's arguments; ``MarkerError`` on the first problem.

    ``metric`` and ``calibration_data`` name optional fixtures: the metric (top-1
    accuracy when ``compress_metric`` is not defined) and the activation calibration
    batches (``compress_calibration_data`` for the default data fixture, else the data).
    ``search`` finds the most compression of one knob within the budgets; ``keep_float``
    ("auto" or module-name patterns) leaves layers uncompressed; ``recover`` names a
    fixture giving ``(model, data) -> model``, run on the compressed copy with the
    batches of the ``recover_data`` fixture.
    """
    if args:
        raise MarkerError(
            "positional arguments",
            f"the marker takes keyword arguments only, got {args!r}; "
            'write e.g. compress(quantize="int8", max_accuracy_drop=0.01)',
        )
    for name in kwargs:
        if name not in ARGUMENTS:
            close = difflib.get_close_matches(name, ARGUMENTS, n=1, cutoff=HINT_CUTOFF)
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise MarkerError(
                name, f"unknown argument{hint}; valid arguments: {', '.join(ARGUMENTS)}"
            )
    arguments = MARKER_SIGNATURE.bind(**kwargs)
    arguments.apply_defaults()
    values = arguments.arguments
    check = parse_check(values, explicit=kwargs)
    if not check.budgets:
        raise MarkerError(
            "budget",
            "none given, so the check cannot fail; give at least one of " + ", ".join(BUDGET_NAMES),
        )
    recover = values["recover"]
    builtin = metric_builtin(values["metric"]) is not None
    fixtures = Fixtures(
        **{
            name: fixture_name(values[name], name)
            for name in ("model", "data", "metric", "calibration_data", "recover_data")
            if not (name == "metric" and builtin)
        },
        recover=None if recover is None else fixture_name(recover, "recover"),
        compressor=_optional_name(values["compressor"], "compressor"),
    )
    # a built-in metric travels by name, as an object a call gives: the runner makes it
    return CheckRequest(check, fixtures, {"metric": values["metric"]} if builtin else {})


def call_request(arguments: Mapping[str, Any]) -> CheckRequest:
    """Validate the arguments of the ``compress`` fixture's callable (bound to
    ``CALL_SIGNATURE``).

    As the marker, except that budgets are optional (a search still needs one) and every
    fixture argument (``model``, ``data``, ``metric``, ``calibration_data``, ``recover``,
    ``recover_data``) may be an object rather than a fixture's name. A bad value is a
    ``ValueError`` naming the argument.
    """
    values = {name: value for name, value in arguments.items() if value is not None}
    try:
        check = parse_check(values, explicit=values)
        builtin = metric_builtin(values.get("metric")) is not None
        names = {
            name: fixture_name(value, name)
            for name, value in values.items()
            if name in FIXTURE_ARGUMENTS
            and isinstance(value, str)
            and not (name == "metric" and builtin)
        }
    except MarkerError as error:
        raise ValueError(f"compress(): {error}") from None
    given = {
        name: value
        for name, value in values.items()
        if name in FIXTURE_ARGUMENTS
        and (not isinstance(value, str) or (name == "metric" and builtin))
    }
    return CheckRequest(check, Fixtures(**names), given)


def bind_call(args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """The ``compress(...)`` call's arguments by name; ``TypeError`` as Python words it,
    with a hint for a misspelt keyword."""
    for name in kwargs:
        if name not in CALL_SIGNATURE.parameters:
            close = difflib.get_close_matches(name, ARGUMENTS, n=1, cutoff=HINT_CUTOFF)
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise TypeError(
                f"compress() got an unexpected keyword argument {name!r}{hint}; it takes "
                f"the marker's arguments: {', '.join(ARGUMENTS)}"
            )
    return dict(CALL_SIGNATURE.bind(*args, **kwargs).arguments)


def parse_check(values: Mapping[str, Any], explicit: Mapping[str, Any] | None = None) -> Check:
    """The ``Check`` of marker-style ``values`` (missing names take their defaults).

    A built-in metric sets ``higher_is_better``; one given in ``explicit`` (the arguments
    actually written) that contradicts it is a ``MarkerError``.
    """
    search = values.get("search")
    compressor = values.get("compressor") is not None
    recipe = parse_recipe(
        values.get("quantize"), values.get("prune"), searched=search is not None or compressor
    )
    budgets = parse_budgets({name: values.get(name) for name in BUDGET_NAMES})
    higher_is_better = flag(values.get("higher_is_better", True), "higher_is_better")
    builtin = metric_builtin(values.get("metric"))
    if builtin is not None:
        if "higher_is_better" in (explicit or {}) and higher_is_better != builtin.higher_is_better:
            better = "higher" if builtin.higher_is_better else "lower"
            raise MarkerError(
                "higher_is_better",
                f"{higher_is_better} contradicts the metric {builtin.title}, where {better} is "
                "better; leave higher_is_better out (a built-in metric sets it)",
            )
        higher_is_better = builtin.higher_is_better
    # Whether the metric is a fraction (top-1 accuracy) is known when it runs; the
    # direction is known now, and the runner asks again with the metric itself.
    vacuous = budgets.cannot_fail(MetricKind("metric", higher_is_better, percent=False))
    if vacuous is not None:
        raise MarkerError(*vacuous)
    adjustments = Adjustments(
        search=_search(search, recipe, budgets),
        keep_float=_keep_float(values.get("keep_float")),
    )
    if compressor:
        runtime = _compressor(values.get("runtime"), recipe, budgets, adjustments)
    else:
        runtime = _runtime(values.get("runtime", "simulate"), recipe, budgets, adjustments)
    if runtime != "simulate" and values.get("recover") is not None:
        raise MarkerError(
            "runtime", f"{runtime!r} deploys the recipe as it is; recover= is for simulated checks"
        )
    return Check(
        recipe,
        budgets,
        adjustments,
        higher_is_better=higher_is_better,
        runtime=runtime,
        verify=flag(values.get("verify", True), "verify"),
    )


def _compressor(runtime: Any, recipe: Recipe, budgets: Budgets, adjustments: Adjustments) -> str:
    """``COMPRESSOR``: the check deploys with the user's compressor fixture. A recipe given
    beside it is the simulation it is compared with (``max_fidelity_gap`` needs one)."""
    if runtime not in (None, "simulate"):
        raise MarkerError(
            "compressor", f"deploys the model itself; drop runtime={runtime!r} (one or the other)"
        )
    if adjustments.search is not None or adjustments.keep_float is not None:
        raise MarkerError(
            "compressor", "deploys what it returns; search= and keep_float= adjust a recipe"
        )
    if "max_fidelity_gap" in budgets and recipe == Recipe():
        raise MarkerError(
            "max_fidelity_gap",
            "compares the compressor's model with the simulation of a recipe; give the recipe "
            'it implements too, e.g. quantize="int8"',
        )
    return COMPRESSOR


def _runtime(value: Any, recipe: Recipe, budgets: Budgets, adjustments: Adjustments) -> str:
    """The runtime, checked against the recipe, the budgets and the installed extras."""
    try:
        runtime = check_runtime("simulate" if value is None else value)
    except ValueError as error:
        raise MarkerError("runtime", str(error)) from None
    if runtime == "simulate":
        for name in budgets:
            if BUDGETS[name].needs_runtime:
                raise MarkerError(
                    name,
                    "limits the deployed model, and a simulated check has none (fake "
                    "quantization in eager PyTorch is neither the runtime's numbers nor a "
                    'speed measurement); add runtime="onnxruntime" or runtime="torchao"',
                )
        return runtime
    if adjustments.search is not None or adjustments.auto_keep_float:
        raise MarkerError(
            "runtime",
            f'{runtime!r} deploys one fixed recipe; search= and keep_float="auto" explore '
            "recipes in simulation: find the recipe there, then deploy it",
        )
    reason = unsupported(runtime, recipe.quantize, recipe.prune) or missing_extra(runtime)
    if reason is not None:
        raise MarkerError("runtime", reason)
    return runtime


def parse_recipe(quantize: Any, prune: Any, *, searched: bool = False) -> Recipe:
    """The recipe from specs or shorthands; at least one, unless a search chooses it."""
    quant_spec: QuantSpec | None
    prune_spec: PruneSpec | None
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
    return Recipe(quant_spec, prune_spec)


def parse_budgets(values: Mapping[str, Any]) -> Budgets:
    """``Budgets`` from raw values, each checked by its registry entry."""
    try:
        return Budgets(**values)
    except ValueError as error:
        name, _, message = str(error).partition(" ")
        raise MarkerError(name, message) from None


def _search(search: Any, recipe: Recipe, budgets: Budgets) -> str | None:
    """The search kind, validated against the fixed part of the recipe and the budgets."""
    if search is None:
        return None
    try:
        return check_search(search, quantize=recipe.quantize, prune=recipe.prune, budgets=budgets)
    except ValueError as error:
        raise MarkerError("search", str(error)) from None


def _keep_float(value: Any) -> str | tuple[str, ...] | None:
    if value is None:
        return None
    try:
        return check_keep_float(value)
    except ValueError as error:
        raise MarkerError("keep_float", str(error)) from None


def metric_builtin(value: Any) -> BuiltinName | None:
    """The built-in metric ``metric=`` names or is, or None (a fixture's name, an object).

    Built-in names are reserved: ``metric="cosine"`` is the built-in even where a fixture
    of that name exists. A name shaped like one that is none (``"cosin(logits)"``) is a
    ``MarkerError`` listing the built-ins.
    """
    spec = getattr(value, "spec", None)
    if isinstance(spec, BuiltinName):  # a BuiltinMetric object (compress(metric=...))
        return spec
    if not isinstance(value, str):
        return None
    try:
        return builtin_name(value)
    except ValueError as error:
        raise MarkerError("metric", str(error)) from None


def _optional_name(value: Any, argument: str) -> str | None:
    return None if value is None else fixture_name(value, argument)


def fixture_name(value: Any, argument: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise MarkerError(argument, f"must be the name of a fixture (a string), got {value!r}")
    return value


def flag(value: Any, argument: str) -> bool:
    if not isinstance(value, bool):
        raise MarkerError(argument, f"must be True or False, got {value!r}")
    return value


def call_label(request: CheckRequest, model: Any, data: Any) -> str:
    """The recipe in words, plus the model and data when the call named its own."""
    label = request.recipe.describe()
    search = request.check.adjustments.search
    if search is not None:  # the fixed part, then the knob the search chooses
        fixed = "" if request.recipe == Recipe() else f"{label} + "
        label = f"{fixed}search {search}"
    if model is None and data is None:
        return label

    # a name stands for itself (None for the default fixture), an object for its type
    def name(given: Any, default: str) -> str:
        if given is None or isinstance(given, str):
            return given or default
        return type(given).__name__

    fixtures = request.fixtures
    return f"{label} on {name(model, fixtures.model)}/{name(data, fixtures.data)}"
