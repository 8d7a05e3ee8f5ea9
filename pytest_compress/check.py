"""One compression check: compress a copy, evaluate, measure, and hold it against its budgets.

The float model's metric and size do not depend on the recipe, so ``ReferenceCache``
keeps them per (model, data, metric, device): K checks of one model cost K + 1
evaluations, not 2K. No pytest import: the plugin resolves fixtures and calls ``run_check``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass
from typing import Any

from .budgets import check_budgets
from .markers import CheckRequest
from .result import DEFAULT_METRIC, CompressionResult


@dataclass(frozen=True)
class Reference:
    """The float model's measurements, shared by every check of that model."""

    metric: float
    size: int
    seconds: float


class ReferenceCache:
    """Float measurements by key, valid while the key's objects are the very same objects.

    Keys name the fixtures; the identity check makes a function-scoped fixture (a new
    model per test) re-measure instead of reusing numbers of another object. One entry
    per key, so a stream of new objects under one name holds on to one of them only.
    """

    def __init__(self) -> None:
        self._entries: dict[Hashable, tuple[tuple[Any, ...], Reference]] = {}

    def get(
        self, key: Hashable, objects: tuple[Any, ...], compute: Callable[[], Reference]
    ) -> tuple[Reference, bool]:
        """The cached reference for ``key`` (and True), or a fresh one (and False)."""
        entry = self._entries.get(key)
        if entry is not None and all(a is b for a, b in zip(entry[0], objects, strict=True)):
            return entry[1], True
        reference = compute()
        self._entries[key] = (objects, reference)
        return reference, False


def run_check(
    model: Any,
    data: Iterable[Any],
    request: CheckRequest,
    *,
    metric: Any = None,
    metric_name: str = DEFAULT_METRIC,
    calibration_data: Iterable[Any] | None = None,
    device: str = "cpu",
    cache: ReferenceCache | None = None,
    cache_key: Hashable = None,
    model_label: str | None = None,
    data_label: str | None = None,
) -> CompressionResult:
    """Compress ``model`` as ``request`` says, measure both models, and give the verdict.

    ``model`` is never modified: the engine compresses a deep copy, and evaluation
    restores the train/eval flags.
    """
    from .apply import compress_model
    from .measure import compressed_size, evaluate, model_size, sparsity
    from .specs import describe_recipe

    _require_reiterable(data, "data")
    if calibration_data is not None:
        _require_reiterable(calibration_data, "calibration data")
    started = time.perf_counter()

    def measure_float() -> Reference:
        begun = time.perf_counter()
        value = evaluate(model, data, metric, device=device)
        return Reference(value, model_size(model), time.perf_counter() - begun)

    if cache is None:
        reference, cached = measure_float(), False
    else:
        reference, cached = cache.get((cache_key, device), (model, data, metric), measure_float)

    begun = time.perf_counter()
    compressed = compress_model(
        model,
        quantize=request.quantize,
        prune=request.prune,
        calibration_data=calibration_data if calibration_data is not None else data,
    )
    compress_seconds = time.perf_counter() - begun

    begun = time.perf_counter()
    compressed_metric = evaluate(compressed, data, metric, device=device)
    evaluate_seconds = time.perf_counter() - begun

    begun = time.perf_counter()
    packed_size = compressed_size(compressed)
    zeros = sparsity(compressed).overall
    measure_seconds = time.perf_counter() - begun

    drop = reference.metric - compressed_metric
    if not request.higher_is_better:
        drop = -drop  # for a loss or an error rate, the increase is the loss of quality
    relative = _relative(drop, reference.metric)
    ratio = packed_size / reference.size if reference.size else math.inf
    checks = check_budgets(
        request.budgets,
        accuracy_drop=drop,
        relative_drop=relative,
        size_ratio=ratio,
        compressed_size=packed_size,
        sparsity=zeros,
    )
    return CompressionResult(
        float_metric=reference.metric,
        compressed_metric=compressed_metric,
        accuracy_drop=drop,
        relative_drop=relative,
        float_size=reference.size,
        compressed_size=packed_size,
        size_ratio=ratio,
        sparsity=zeros,
        recipe=describe_recipe(request.quantize, request.prune),
        quantize=request.quantize,
        prune=request.prune,
        budgets=request.budgets,
        checks=tuple(checks),
        timings={
            "float_evaluate": 0.0 if cached else reference.seconds,
            "compress": compress_seconds,
            "evaluate": evaluate_seconds,
            "measure": measure_seconds,
            "total": time.perf_counter() - started,
        },
        metric=metric_name,
        higher_is_better=request.higher_is_better,
        model=model_label or request.model,
        data=data_label or request.data,
        device=device,
    )


def _relative(drop: float, reference: float) -> float:
    # A zero float metric has no relative scale: no change is 0, any change is infinite.
    if reference == 0:
        return 0.0 if drop == 0 else math.copysign(math.inf, drop)
    return drop / abs(reference)


def _require_reiterable(data: Any, what: str) -> None:
    # An iterator is used up by the float evaluation, and the compressed model would then
    # be measured on nothing; say so instead of failing with "no samples".
    if iter(data) is data:
        raise ValueError(
            f"the {what} is an iterator ({type(data).__name__}), which can be read only once; "
            "give something that can be iterated again, such as a DataLoader or a list of batches"
        )
