"""One compression check: compress a copy, evaluate, measure, and hold it against its budgets.

The float model's metric and size do not depend on the recipe, so they are kept per
(model, data, metric, device) in an ``IdentityMemo``: K checks of one model cost K + 1
evaluations, not 2K. With a ``ResultCache`` and the check's ``CheckKeys`` the numbers
also outlive the session: a check whose key is found is not compressed or evaluated at
all, and its budgets are checked on the stored numbers. No pytest import: the plugin
resolves fixtures and calls ``run_check``.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Hashable, Iterable
from dataclasses import dataclass
from typing import Any

from ..budgets import check_budgets
from ..plugin.markers import CheckRequest
from .cache import CheckEntry, CheckKeys, IdentityMemo, ReferenceEntry, ResultCache
from .result import DEFAULT_METRIC, CompressionResult


@dataclass(frozen=True)
class Reference:
    """The float model's measurements, shared by every check of that model."""

    metric: float
    size: int
    seconds: float


@dataclass(frozen=True)
class CheckContext:
    """What the numbers of a check are labelled with in its result."""

    metric_name: str = DEFAULT_METRIC
    model_label: str | None = None
    data_label: str | None = None
    device: str = "cpu"


@dataclass(frozen=True)
class Recovery:
    """A recovery step for the compressed copy: ``fn(model, data) -> model`` and its data.

    ``data`` is the user's training batches (the ``recover_data`` fixture), never the
    evaluation data: a model fine-tuned on what it is then measured on would look better
    than it is.
    """

    fn: Any
    data: Any


def run_check(
    model: Any,
    data: Iterable[Any],
    request: CheckRequest,
    *,
    metric: Any = None,
    metric_name: str = DEFAULT_METRIC,
    calibration_data: Iterable[Any] | None = None,
    device: str = "cpu",
    cache: IdentityMemo | None = None,
    cache_key: Hashable = None,
    model_label: str | None = None,
    data_label: str | None = None,
    results: ResultCache | None = None,
    keys: CheckKeys | None = None,
    recovery: Recovery | None = None,
) -> CompressionResult:
    """Compress ``model`` as ``request`` says, measure both models, and give the verdict.

    ``model`` is never modified: the engine compresses a deep copy, and evaluation
    restores the train/eval flags. ``results`` and ``keys`` together turn on the
    persistent cache: a stored check is returned as it was measured (``cached``).
    """
    from .materialize import require_reiterable

    require_reiterable(data, "data")
    if calibration_data is not None:
        require_reiterable(calibration_data, "calibration data")
    started = time.perf_counter()
    context = CheckContext(
        metric_name, model_label or request.model, data_label or request.data, device
    )
    persistent = results if keys is not None else None
    if persistent is not None and keys is not None:
        stored = persistent.check(keys.check)
        if stored is not None:
            timings = {"total": time.perf_counter() - started}
            return _verdict(request, stored, context, timings, cached=True)

    def measure_float() -> Reference:
        return _measure_float(model, data, metric, device, persistent, keys)

    if cache is None:
        reference, remembered = measure_float(), False
    else:
        reference, remembered = cache.get((cache_key, device), (model, data, metric), measure_float)
    measured, timings, recovered = _measure_compressed(
        model, data, request, metric, calibration_data, device, recovery
    )
    entry = CheckEntry(reference.metric, reference.size, *measured)
    # A recovered check's numbers depend on the recovery and its data too, which the keys
    # do not cover: the caller passes no keys for one, and it is never stored.
    if persistent is not None and keys is not None and recovery is None:
        persistent.put_check(keys.check, entry)
    timings = {
        "float_evaluate": 0.0 if remembered else reference.seconds,
        **timings,
        "total": time.perf_counter() - started,
    }
    result = _verdict(request, entry, context, timings, cached=False)
    return result if recovered is None else dataclasses.replace(result, recovery=recovered)


def _measure_float(
    model: Any,
    data: Iterable[Any],
    metric: Any,
    device: str,
    persistent: ResultCache | None,
    keys: CheckKeys | None,
) -> Reference:
    """The float model's metric and size: from the persistent cache, else measured (and stored)."""
    from ..engine.measure import evaluate, model_size

    if persistent is not None and keys is not None:
        stored = persistent.reference(keys.reference)
        if stored is not None:
            return Reference(stored.metric, stored.size, 0.0)
    begun = time.perf_counter()
    reference = Reference(
        evaluate(model, data, metric, device=device),
        model_size(model),
        time.perf_counter() - begun,
    )
    if persistent is not None and keys is not None:
        persistent.put_reference(keys.reference, ReferenceEntry(reference.metric, reference.size))
    return reference


def _measure_compressed(
    model: Any,
    data: Iterable[Any],
    request: CheckRequest,
    metric: Any,
    calibration_data: Iterable[Any] | None,
    device: str,
    recovery: Recovery | None = None,
) -> tuple[tuple[float, int, float], dict[str, float], Any]:
    """((compressed metric, compressed size, sparsity), seconds by phase, RecoveryResult or
    None) of a fresh copy, recovered first when ``recovery`` is given."""
    from ..engine.apply import compress_model
    from ..engine.batches import model_device
    from ..engine.measure import evaluate, sparsity
    from ..fileformat.container import compressed_size
    from .materialize import resolve_device

    calibration = calibration_data if calibration_data is not None else data
    begun = time.perf_counter()
    compressed = compress_model(
        model, quantize=request.quantize, prune=request.prune, calibration_data=calibration
    )
    compress_seconds = time.perf_counter() - begun
    target = resolve_device(device)
    if model_device(compressed) != target:
        compressed.to(target)  # our own copy: move it, rather than let evaluate copy it again

    recovered = None
    recover_seconds = 0.0
    if recovery is not None:
        begun = time.perf_counter()
        compressed, recovered = _recover(
            model, compressed, request, recovery, calibration, metric, data, target
        )
        recover_seconds = time.perf_counter() - begun

    begun = time.perf_counter()
    packed_size = compressed_size(compressed)  # the file the user would ship, after recovery
    zeros = sparsity(compressed).overall
    measure_seconds = time.perf_counter() - begun

    begun = time.perf_counter()
    compressed_metric = evaluate(compressed, data, metric, device=target)
    evaluate_seconds = time.perf_counter() - begun
    timings = {
        "compress": compress_seconds,
        "evaluate": evaluate_seconds,
        "measure": measure_seconds,
    }
    if recovered is not None:
        timings["recover"] = recover_seconds
        recovered = recovered.with_metrics(recovered.metric_before, compressed_metric)
    return (compressed_metric, packed_size, zeros), timings, recovered


def _recover(
    model: Any,
    compressed: Any,
    request: CheckRequest,
    recovery: Recovery,
    calibration: Iterable[Any],
    metric: Any,
    data: Iterable[Any],
    device: Any,
) -> tuple[Any, Any]:
    """The recovered copy and its ``RecoveryResult`` (metric before recovery filled in).

    The masks come from the float model, so exactly the weights the recipe pruned are
    held at zero; the copy is re-quantized with the recipe after ``recovery.fn``.
    """
    from ..engine.measure import evaluate
    from ..tuning.recovery import pruning_masks, recover_compressed

    masks = pruning_masks(model, request.prune) if request.prune is not None else {}
    before = evaluate(compressed, data, metric, device=device)
    result = recover_compressed(
        compressed,
        recovery.fn,
        recovery.data,
        quantize=request.quantize,
        prune=request.prune,
        masks={name: mask.to(device) for name, mask in masks.items()},
        calibration_data=calibration,
    )
    # metric_after is the check's own evaluation of the recovered copy, filled in after it
    return result.model, result.with_metrics(before, before)


def _verdict(
    request: CheckRequest,
    entry: CheckEntry,
    context: CheckContext,
    timings: dict[str, float],
    *,
    cached: bool,
) -> CompressionResult:
    """The result of measured (or stored) numbers: drops, ratio, and the budgets' checks."""
    from ..engine.specs import describe_recipe

    drop = entry.float_metric - entry.compressed_metric
    if not request.higher_is_better:
        drop = -drop  # for a loss or an error rate, the increase is the loss of quality
    relative = _relative(drop, entry.float_metric)
    ratio = entry.compressed_size / entry.float_size if entry.float_size else math.inf
    checks = check_budgets(
        request.budgets,
        accuracy_drop=drop,
        relative_drop=relative,
        size_ratio=ratio,
        compressed_size=entry.compressed_size,
        sparsity=entry.sparsity,
    )
    return CompressionResult(
        float_metric=entry.float_metric,
        compressed_metric=entry.compressed_metric,
        accuracy_drop=drop,
        relative_drop=relative,
        float_size=entry.float_size,
        compressed_size=entry.compressed_size,
        size_ratio=ratio,
        sparsity=entry.sparsity,
        recipe=describe_recipe(request.quantize, request.prune),
        quantize=request.quantize,
        prune=request.prune,
        budgets=request.budgets,
        checks=tuple(checks),
        timings=timings,
        metric=context.metric_name,
        higher_is_better=request.higher_is_better,
        model=context.model_label or request.model,
        data=context.data_label or request.data,
        device=context.device,
        cached=cached,
    )


def _relative(drop: float, reference: float) -> float:
    # A zero float metric has no relative scale: no change is 0, any change is infinite.
    if reference == 0:
        return 0.0 if drop == 0 else math.copysign(math.inf, drop)
    return drop / abs(reference)
