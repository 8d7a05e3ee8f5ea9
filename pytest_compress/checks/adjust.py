"""Adjust a recipe from evaluation: search a knob, keep layers float, blame layers on failure.

``run_adjusted(request, run, ...)`` is the loop the seed article leaves to its reader
("evaluate, then adjust"), built from the engine's parts. ``run(request)`` is the
caller's: it runs one ordinary check of a concrete recipe and returns its
``CompressionResult`` (the plugin's check, with its float memo and persistent cache),
so every evaluation of a search or of ``keep_float`` is an ordinary check. In order:

1. ``keep_float`` patterns are added to the ``exclude`` of the recipe (and of the
   searched spec);
2. ``search``: the most compression of one knob at which every budget holds; the
   result reported is the chosen trial's, or the closest one when no setting passes;
3. when the result breaks a budget that more compression breaks (the metric's),
   ``layer_sensitivity`` compresses each layer alone and ranks them (one evaluation
   per layer, capped); off unless ``sensitivity_limit`` is given, except that
   ``keep_float="auto"`` needs the ranking;
4. ``keep_float="auto"`` keeps the most sensitive layers float until every budget holds.

The returned result carries what each step found (``search``, ``keep_float``,
``sensitivity``). No pytest import.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable
from typing import Any

from ..plugin.markers import CheckRequest
from .result import CompressionResult

RunCheck = Callable[[CheckRequest], CompressionResult]


def run_adjusted(
    request: CheckRequest,
    run: RunCheck,
    *,
    model: Any,
    evaluate: Callable[[Any], float],
    calibration_data: Iterable[Any] | None = None,
    sensitivity_limit: int | None = None,
    metric_name: str = "accuracy",
) -> CompressionResult:
    """The check of ``request`` with its search, keep_float and sensitivity steps applied.

    ``evaluate(model) -> float`` measures a model on the check's data (for sensitivity);
    ``sensitivity_limit`` caps the layers measured (None: no sensitivity unless
    ``keep_float="auto"`` needs it, then 20).
    """
    from ..tuning.keep_float import KEEP_FLOAT_AUTO, keep_float_specs
    from ..tuning.search import search
    from ..tuning.trial import Trial

    def trial(quantize: Any, prune: Any) -> Trial:
        return Trial.from_result(run(request.trial(quantize, prune)))

    patterns: tuple[str, ...] = ()
    quantize, prune = request.quantize, request.prune
    if isinstance(request.keep_float, tuple):
        patterns = request.keep_float
        # the fixed part here; a search adds the patterns to the spec it chooses
        if quantize is not None or prune is not None:
            quantize, prune = keep_float_specs(
                quantize, prune, patterns, model=None if request.search else model
            )

    found = None
    if request.search is not None:
        found = search(
            request.search,
            trial,
            quantize=quantize,
            prune=prune,
            exclude=patterns,
            metric_name=metric_name,
        )
        assert found.closest is not None  # every grid has a setting, so one was tried
        result = found.closest.result
    else:
        result = run(request.trial(quantize, prune))

    auto = request.keep_float == KEEP_FLOAT_AUTO
    sensitivity = None
    if Trial.from_result(result).damaged and (sensitivity_limit is not None or auto):
        sensitivity = _sensitivity(model, result, evaluate, calibration_data, sensitivity_limit)

    kept = None
    if auto:
        kept = _keep_float_auto(model, sensitivity, trial, result)
        result = kept.final.result
    return dataclasses.replace(result, search=found, keep_float=kept, sensitivity=sensitivity)


def _sensitivity(
    model: Any,
    result: CompressionResult,
    evaluate: Callable[[Any], float],
    calibration_data: Iterable[Any] | None,
    limit: int | None,
) -> Any:
    from ..tuning.sensitivity import DEFAULT_LIMIT, layer_sensitivity

    return layer_sensitivity(
        model,
        quantize=result.quantize,
        prune=result.prune,
        evaluate=evaluate,
        float_metric=result.float_metric,
        higher_is_better=result.higher_is_better,
        limit=DEFAULT_LIMIT if limit is None else limit,
        calibration_data=calibration_data,
        metric_name=result.metric,
    )


def _keep_float_auto(model: Any, sensitivity: Any, trial: Any, result: CompressionResult) -> Any:
    from ..tuning.keep_float import keep_float_auto
    from ..tuning.trial import Trial

    # A passing recipe, or one that only misses a size or sparsity floor, has no ranking:
    # nothing to keep float, and keep_float_auto says so without evaluating.
    ranking = sensitivity.ranked if sensitivity is not None else ()
    return keep_float_auto(
        model,
        ranking,
        trial,
        quantize=result.quantize,
        prune=result.prune,
        initial=Trial.from_result(result),
        metric_name=result.metric,
    )
