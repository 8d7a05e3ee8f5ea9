"""The check runner: one object per session that compresses, measures and judges checks.

``CheckRunner.run(check, inputs)`` is the whole pytest-free path from a parsed ``Check``
and its resolved ``CheckInputs`` to a ``CompressionResult``. The runner owns what
outlives one check: the float model's measurements per (model, data, metric, device),
so K checks of one model cost K + 1 evaluations, not 2K; the data read once per fixture;
the fingerprints; and the persistent ``ResultCache``, so a check measured by an earlier
run with the same weights, data, metric, recipe and versions is neither compressed nor
evaluated, and its budgets are checked on the stored numbers.

The tuning loop runs here too, each of its evaluations an ordinary check:

1. ``keep_float`` patterns are added to the ``exclude`` of the recipe;
2. ``search``: the most compression of one knob at which every budget holds; the
   result reported is the chosen trial's, or the closest one when no setting passes;
3. when the result breaks a budget that more compression breaks (the metric's), each
   layer is compressed alone and ranked (``layer_sensitivity``, capped);
4. ``keep_float="auto"`` keeps layers float, most metric recovered per byte first, until
   every budget holds (``rank_layers_per_byte``: every compressed layer is a candidate).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..budgets import LATENCY_BUDGETS
from ..engine.apply import compress_model, low_memory_enabled, low_memory_mode, working_copy
from ..engine.batches import describe_inputs, model_device
from ..engine.invariants import verify_recipe
from ..engine.layers import computed_weights, preset_members, skipped_layers
from ..engine.lazy import move_clone
from ..engine.measure import evaluate, metric_source, model_size, reference_outputs, sparsity
from ..engine.metrics import BuiltinMetric, builtin_metric
from ..engine.record import grid_memo
from ..engine.spares import SpareTensors, reusing
from ..errors import BudgetError, CompressError, ModelError
from ..fileformat.container import compressed_size
from ..metrics import DEFAULT_METRIC, MetricKind
from ..runtimes.deployed import Deployed
from ..runtimes.latency import DEFAULT_MAX_SECONDS
from ..tuning.keep_float import (
    KeepFloatCandidate,
    KeepFloatResult,
    keep_float_auto,
    keep_float_specs,
    rank_layers_per_byte,
    require_matches,
)
from ..tuning.proxy import PROXY_BATCHES
from ..tuning.recovery import RecoveryResult, pruning_masks, recover_compressed
from ..tuning.search import search
from ..tuning.sensitivity import (
    DEFAULT_LIMIT,
    SensitivityResult,
    layer_sensitivity,
    touched_layers,
)
from ..tuning.trial import Trial
from .cache import (
    UNSIZED,
    CheckEntry,
    CheckStore,
    DeployedEntry,
    IdentityMemo,
    NoStore,
    ReferenceEntry,
    ResultCache,
    combine,
    runtime_versions,
)
from .copies import DEFAULT_LOW_MEMORY, DEFAULT_LOW_MEMORY_SHARE, CopyMode, choose_copy_mode
from .copies import describe as describe_copy_mode
from .deploy import (
    PredictModule,
    deploy,
    example_inputs,
    export_float,
    from_compressor,
    time_deployed,
)
from .fingerprint import environment_fingerprint
from .inputs import PreparedInputs
from .materialize import EvaluationData, resolve_device
from .request import COMPRESSOR, Check, CheckInputs, Recipe
from .result import CompressionResult

# The layout of a stored sensitivity: a new one never reads an older one's document.
SENSITIVITY_FORMAT = "sensitivity 2: proxy-ranked, top layers measured"


@dataclass(frozen=True)
class Reference:
    """The float model's measurements, shared by every check of that model."""

    metric: float
    size: int
    seconds: float


class CheckRunner:
    """Runs the checks of one session; pytest-free.

    - ``device``: where models are evaluated (``cpu``, ``cuda``, ``cuda:N``).
    - ``cache_mb``: data up to this size is kept on the device; larger data streams.
    - ``sensitivity_limit``: at most this many layers are measured alone when a check
      breaks its metric budget; None measures none (unless ``keep_float="auto"``).
    - ``results``: the persistent cache, or None to measure everything and store nothing.
    - ``notes``: what the reports should say about data and the cache, by topic.
    - ``latency_seconds``: the time cap of each latency measurement; ``threads``: torch's
      and the runtime's threads while one is timed.
    - ``exports``: where float models exported for ONNX Runtime are kept across sessions,
      named by the model's fingerprint (None: in the session's scratch folder only).
    - ``verify``: the recipe-invariant gate after every check (``engine/invariants.py``).
    - ``sensitivity_seconds``: no further layer is measured alone after this long (None: no
      time budget, only ``sensitivity_limit``).
    - ``low_memory``: ``on``, ``off`` or ``auto`` (when the model's bytes exceed
      ``low_memory_share`` of the available memory): compress shallow clones holding packed
      weights instead of deep copies (``checks/copies.py``); the numbers are the same.
    """

    def __init__(
        self,
        *,
        device: str,
        cache_mb: float,
        sensitivity_limit: int | None,
        results: ResultCache | None,
        notes: dict[str, str] | None = None,
        latency_seconds: float = DEFAULT_MAX_SECONDS,
        threads: int = 1,
        exports: Path | None = None,
        verify: bool = True,
        sensitivity_seconds: float | None = None,
        low_memory: str = DEFAULT_LOW_MEMORY,
        low_memory_share: float = DEFAULT_LOW_MEMORY_SHARE,
    ) -> None:
        self.device = device
        self.latency_seconds = latency_seconds
        self.threads = threads
        self.exports = exports
        self.verify = verify
        self.sensitivity_seconds = sensitivity_seconds
        self.low_memory = low_memory
        self.low_memory_share = low_memory_share
        self.copy_modes = IdentityMemo()  # per model: a deep copy or the low-memory clone
        self._scratch: tempfile.TemporaryDirectory[str] | None = None
        self.sensitivity_limit = sensitivity_limit
        self.results = results
        self.references = IdentityMemo()
        self.folded = IdentityMemo()  # models with torch.nn.utils.prune weights, folded once
        self.sources = IdentityMemo()  # the output a built-in metric reads, per model and data
        self.float_outputs = IdentityMemo()  # what a relative metric compares with
        self.sensitivities = IdentityMemo()  # per-layer drops, shared by checks of a recipe
        self.spares = SpareTensors()  # memory of measured copies, for the next deep copy
        self.inputs = PreparedInputs(
            device=device, cache_mb=cache_mb, fingerprints=results is not None, notes=notes
        )
        self.notes = self.inputs.notes

    def scratch(self) -> Path:
        """The session's scratch folder (removed with the runner, or when the process ends)."""
        if self._scratch is None:
            self._scratch = tempfile.TemporaryDirectory(prefix="pytest-compress-")
        return Path(self._scratch.name)

    def workdir(self) -> Path:
        """A fresh folder for one deployment's files, inside the scratch folder."""
        return Path(tempfile.mkdtemp(dir=self.scratch()))

    def run(self, check: Check, inputs: CheckInputs) -> CompressionResult:
        """Compress a copy of ``inputs.model`` as ``check`` says, measure, and judge it.

        The model is never modified: the engine compresses a deep copy, and evaluation
        restores the train/eval flags. A model that is not one, or a budget or direction
        that means nothing for the metric, is a ``CompressError`` before any work.
        """
        require_model(inputs.model, inputs.model_label)
        inputs = with_builtin_metric(inputs)
        refuse_meaningless(check, inputs)
        evaluation = self.inputs.data(inputs.data_label, inputs.data)
        calibration = evaluation
        # read only by recipes that calibrate: others need not pay for reading it (a search
        # or keep_float never adds activation quantization to the fixed recipe)
        if (
            inputs.calibration is not None
            and inputs.calibration is not inputs.data
            and check.recipe.calibrates
        ):
            calibration = self.inputs.data(
                inputs.calibration_label, inputs.calibration, "calibration data"
            )
        mode = self.copy_mode(inputs)
        if mode.low_memory and inputs.recovery is not None:
            raise CompressError(
                f"recover= fine-tunes a full copy of {inputs.model_label}, which the "
                f"low-memory mode does not make ({mode.why}); run this check with "
                "--compress-low-memory=off on a machine with room for a second copy"
            )
        if mode.low_memory:
            self.spares.clear()  # memory is short: no spare copy is held
        else:
            self.spares.keep_only(inputs.model)
        with low_memory_mode(mode.low_memory), reusing(None if mode.low_memory else self.spares):
            result = _CheckRun(self, inputs, evaluation, calibration).adjusted(check)
        return dataclasses.replace(result, low_memory=mode.low_memory)

    def copy_mode(self, inputs: CheckInputs) -> CopyMode:
        """The copy the model's checks compress, chosen once per model in a session (the
        report says when it is the low-memory clone)."""

        def choose() -> CopyMode:
            mode = choose_copy_mode(inputs.model, self.low_memory, self.low_memory_share)
            if mode.low_memory:
                self.notes[f"low-memory {inputs.model_label}"] = describe_copy_mode(
                    mode, inputs.model_label
                )
            return mode

        return self.copy_modes.get(inputs.model_label, (inputs.model,), choose)[0]


def missing_device(device: str, index: int | None) -> str | None:
    """Why CUDA device ``index`` of ``device`` cannot be used here, or None when it can."""
    if index is None:
        return None
    if not torch.cuda.is_available():
        return (
            f"--compress-device={device}: CUDA is not available on this machine "
            f"(torch {torch.__version__}); use --compress-device=cpu"
        )
    count = torch.cuda.device_count()
    if index >= count:
        return (
            f"--compress-device={device}: this machine has {count} CUDA "
            f"device(s), cuda:0 to cuda:{count - 1}"
        )
    return None


def require_model(model: Any, label: str) -> None:
    """``ModelError`` unless ``model`` is a ``torch.nn.Module`` with real weights.

    Asked before anything reads the model (its fingerprint, a copy, an evaluation), so
    the message names the mistake rather than the first attribute that was missing.
    """
    kind = type(model).__name__
    if isinstance(model, Mapping):
        raise ModelError(
            f"the model {label} is a {kind} (a state_dict?), not a torch.nn.Module; build "
            "the model and load it with model.load_state_dict(...) in the fixture"
        )
    if isinstance(model, type) or (callable(model) and not isinstance(model, nn.Module)):
        what = f"the class {model.__name__}" if isinstance(model, type) else f"a {kind}"
        raise ModelError(
            f"the model {label} is {what}, not a torch.nn.Module; the fixture must return "
            "the model itself (call it: return make_model())"
        )
    if not isinstance(model, nn.Module):
        raise ModelError(f"the model {label} must be a torch.nn.Module, got {kind}")
    if any(tensor.is_meta for tensor in (*model.parameters(), *model.buffers())):
        raise ModelError(
            f"the model {label} has its weights on the meta device (shapes without values); "
            'load real weights first, e.g. model.to_empty(device="cpu") and then '
            "model.load_state_dict(...)"
        )


def with_builtin_metric(inputs: CheckInputs) -> CheckInputs:
    """``inputs`` with a built-in metric's name (``"cosine"``) made its ``BuiltinMetric``,
    labelled by the name; an unknown name is a ``CompressError`` listing the built-ins."""
    if not isinstance(inputs.metric, str):
        return inputs
    return dataclasses.replace(
        inputs, metric=builtin_metric(inputs.metric), metric_label=inputs.metric
    )


def refuse_meaningless(check: Check, inputs: CheckInputs) -> None:
    """``BudgetError`` for a check that cannot mean anything with its resolved metric:
    a budget that cannot fail, or a direction the metric contradicts
    (``higher_is_better=False`` on top-1 accuracy, True on perplexity)."""
    metric = inputs.metric
    if isinstance(metric, BuiltinMetric) and metric.spec.higher_is_better != check.higher_is_better:
        raise BudgetError(
            f"higher_is_better={check.higher_is_better}, but the metric is "
            f"{metric.spec.title}, where {'higher' if metric.spec.higher_is_better else 'lower'}"
            " is better: remove higher_is_better (a built-in metric sets it)"
        )
    if metric is None and not check.higher_is_better:
        raise BudgetError(
            "higher_is_better=False, but the metric is top-1 accuracy (no metric was given), "
            "where higher is better: a fall in accuracy would "
            "pass as a gain; remove higher_is_better=False, or name the loss or error rate "
            'it describes with metric="..."'
        )
    kind = metric_kind(inputs.metric, inputs.metric_label, check.higher_is_better)
    vacuous = check.budgets.cannot_fail(kind)
    if vacuous is not None:
        raise BudgetError(": ".join(vacuous))


def metric_kind(metric: Any, label: str, higher_is_better: bool) -> MetricKind:
    """How the metric reads: a built-in's own kind, else by its name."""
    if isinstance(metric, BuiltinMetric):
        return metric.kind()
    return MetricKind.named(metric_name(metric, label), higher_is_better)


def metric_name(metric: Any, label: str) -> str:
    """The metric's function name, or its label (fixture) for a lambda or callable object."""
    if metric is None:
        return DEFAULT_METRIC
    name = getattr(metric, "__name__", "")
    return label if not name or name.startswith("<") else name


@dataclass(frozen=True)
class _CheckRun:
    """One check's inputs, read and bound: the runner, the data and the calibration data."""

    runner: CheckRunner
    inputs: CheckInputs
    evaluation: EvaluationData
    calibration: EvaluationData

    @property
    def batches(self) -> Iterable[Any]:
        return self.evaluation.batches

    def metric(self, check: Check) -> MetricKind:
        metric = self.inputs.metric
        if isinstance(metric, BuiltinMetric):  # named with the output it reads
            return metric.kind(self.memo(self.runner.sources, metric_source))
        return MetricKind.named(
            metric_name(metric, self.inputs.metric_label), check.higher_is_better
        )

    def memo(self, memo: IdentityMemo, compute: Any) -> Any:
        """``compute(float model, batches, metric, device)``, once per session for them."""
        inputs, device = self.inputs, self.runner.device
        key = (inputs.model_label, inputs.data_label, inputs.metric_label, device)
        objects = (inputs.model, self.batches, inputs.metric)
        return memo.get(key, objects, lambda: compute(*objects, device))[0]

    def float_reference(self) -> Any:
        """What a relative built-in metric compares with: the float model's read outputs,
        kept for the session; the float model itself (run again) when the data streams."""
        if self.evaluation.streamed:
            return self.inputs.model
        return self.memo(self.runner.float_outputs, reference_outputs)

    @property
    def layered_model(self) -> nn.Module:
        """The model whose layers the tuning loop lists and compresses one by one: the
        user's, or once per session a copy with its torch.nn.utils.prune weights folded."""
        model = self.inputs.model
        if not computed_weights(model):
            return model
        return self.runner.folded.get(
            self.inputs.model_label, (model,), lambda: working_copy(model)
        )[0]

    def skipped(self, recipe: Recipe) -> dict[str, str]:
        """The modules with a weight matrix that ``recipe`` leaves uncompressed, and why."""
        model = self.layered_model
        selected = {layer.name for layer in touched_layers(model, recipe.quantize, recipe.prune)}
        excluded = [p for spec in (recipe.quantize, recipe.prune) if spec for p in spec.exclude]
        return skipped_layers(model, selected, preset_members(model, excluded))

    def evaluate(self, model: nn.Module) -> float:
        metric = self.inputs.metric
        reference = None
        if isinstance(metric, BuiltinMetric) and metric.relative:
            reference = self.float_reference()
        device = self.runner.device
        return evaluate(model, self.batches, metric, device=device, reference=reference)

    # --- the tuning loop -----------------------------------------------------------

    def adjusted(self, check: Check) -> CompressionResult:
        """The check with its keep_float, search and sensitivity steps applied.

        Its ``timings`` are those of the evaluation it reports, plus the wall time of each
        step that ran (``search``, ``sensitivity``, ``keep_float``) and, as ``total``, of
        the whole check.
        """
        started = time.perf_counter()
        phases: dict[str, float] = {}
        adjustments = check.adjustments
        recipe = check.recipe
        require_matches(self.layered_model, adjustments.kept_float)
        if adjustments.kept_float and recipe != Recipe():
            # the fixed part here; a search adds the patterns to the spec it chooses
            model = None if adjustments.search else self.layered_model
            recipe = Recipe(
                *keep_float_specs(
                    recipe.quantize, recipe.prune, adjustments.kept_float, model=model
                )
            )
        found = None
        if adjustments.search is not None:
            begun = time.perf_counter()
            found = search(
                adjustments.search,
                lambda q, p: self.search_trial(check, Recipe(q, p)),
                quantize=recipe.quantize,
                prune=recipe.prune,
                exclude=adjustments.kept_float,
                metric_name=self.metric(check).name,
            )
            assert found.closest is not None  # every grid has a setting, so one was tried
            result: CompressionResult = found.closest.result
            if result.compressed_size == UNSIZED:  # nothing passed: the closest is reported
                result = self.sized(check, result)
                found = found.with_closest(Trial.from_result(result, found.closest.setting))
            phases["search"] = time.perf_counter() - begun
        else:
            result = self.one(check.at(recipe))
        sensitivity = None
        limit = self.runner.sensitivity_limit
        # a NaN is no drop to rank layers by: each layer alone would only be blamed together
        if (
            Trial.from_result(result).damaged
            and not math.isnan(result.compressed_metric)
            and (limit is not None or adjustments.auto_keep_float)
        ):
            begun = time.perf_counter()
            sensitivity = self.sensitivity(result, DEFAULT_LIMIT if limit is None else limit)
            phases["sensitivity"] = time.perf_counter() - begun
        kept = None
        if adjustments.auto_keep_float:
            begun = time.perf_counter()
            kept = self.keep_float_auto(check, result, sensitivity)
            result = kept.final.result
            phases["keep_float"] = time.perf_counter() - begun
        timings = {**result.timings, **phases, "total": time.perf_counter() - started}
        return dataclasses.replace(
            result, search=found, keep_float=kept, sensitivity=sensitivity, timings=timings
        )

    def trial(self, check: Check, recipe: Recipe) -> Trial:
        return Trial.from_result(self.one(check.at(recipe)))

    def search_trial(self, check: Check, recipe: Recipe) -> Trial:
        """One setting of a search. Its size is measured only when a budget limits it or
        the trial passes (a passing trial may be the one reported); a failed trial's file
        is never counted, unless nothing passes and it is the closest (``sized``)."""
        lazy = not check.budgets.limit_size and self.inputs.recovery is None
        return Trial.from_result(self.one(check.at(recipe), lazy_size=lazy))

    def sized(self, check: Check, result: CompressionResult) -> CompressionResult:
        """A trial's result with the size it left unmeasured: its recipe compressed again
        (the same copy: compression is deterministic) and the file counted; no evaluation."""
        recipe = Recipe(result.quantize, result.prune)
        compressed = compress_model(
            self.inputs.model,
            quantize=recipe.quantize,
            prune=recipe.prune,
            calibration_data=self.calibration.batches,
        )
        with grid_memo():
            size = compressed_size(compressed)
        self.give_back(compressed)
        entry = CheckEntry(
            result.float_metric, result.float_size, result.compressed_metric, size, result.sparsity
        )
        trial = check.at(recipe)
        if not result.broken_invariants:
            self.store(trial).put_check(entry)
        return self.verdict(
            trial, entry, result.timings, cached=result.cached, broken=result.broken_invariants
        )

    def give_back(self, compressed: nn.Module) -> None:
        """A measured copy's memory to the next deep copy (none in the low-memory mode)."""
        if not low_memory_enabled():
            self.runner.spares.give(compressed)

    def sensitivity(self, result: CompressionResult, limit: int) -> SensitivityResult:
        """Every layer ranked by the proxy, the top ``limit`` measured alone with the recipe.

        Once per session for the same model, data, metric, calibration data and recipe:
        checks that differ only in their budgets share it (their verdicts differ, the
        per-layer drops do not); and across sessions through the persistent cache, under
        the check's own fingerprints plus the cap, unless the time budget cut it short."""
        inputs = self.inputs
        key = (
            inputs.model_label,
            inputs.data_label,
            inputs.metric_label,
            inputs.calibration_label,
            self.runner.device,
            repr((result.quantize, result.prune)),
            limit,
            self.runner.sensitivity_seconds,
        )
        objects = (inputs.model, self.batches, inputs.metric, self.calibration.batches)
        stored_or_measured = functools.partial(self.stored_sensitivity, result, limit)
        return self.runner.sensitivities.get(key, objects, stored_or_measured)[0]

    def stored_sensitivity(self, result: CompressionResult, limit: int) -> SensitivityResult:
        """From the persistent cache, else measured and stored when complete: a run the
        time budget stopped early depends on the machine's speed that day, so the next
        run measures again rather than serving a partial blame as the whole one."""
        # The check's store: the same fingerprints as the result being blamed.
        store = self.store(Check(Recipe(result.quantize, result.prune)))
        settings = repr(
            (SENSITIVITY_FORMAT, PROXY_BATCHES, limit, result.higher_is_better, result.metric)
        )
        stored = SensitivityResult.from_dict(store.sensitivity(settings))
        if stored is not None and stored.float_metric == result.float_metric:
            return stored
        measured = self.measure_sensitivity(result, limit)
        if not measured.timed_out:
            store.put_sensitivity(settings, measured.to_dict())
        return measured

    def measure_sensitivity(self, result: CompressionResult, limit: int) -> SensitivityResult:
        # the proxy reads the batches keep_float's ranking reads: their errors are shared
        calibration = self.calibration.batches
        return layer_sensitivity(
            self.layered_model,
            quantize=result.quantize,
            prune=result.prune,
            evaluate=self.evaluate,
            float_metric=result.float_metric,
            higher_is_better=result.higher_is_better,
            limit=limit,
            calibration_data=calibration,
            metric_name=result.metric,
            max_seconds=self.runner.sensitivity_seconds,
            proxy_data=calibration if calibration is not None else self.batches,
        )

    def keep_float_auto(
        self, check: Check, result: CompressionResult, sensitivity: SensitivityResult | None
    ) -> KeepFloatResult:
        # A passing recipe, or one that only misses a size or sparsity floor, has no
        # ranking: nothing to keep float, and keep_float_auto says so without evaluating.
        ranking: tuple[KeepFloatCandidate, ...] = ()
        if sensitivity is not None:
            calibration = self.calibration.batches
            ranking = rank_layers_per_byte(
                self.layered_model,
                result.quantize,
                result.prune,
                calibration if calibration is not None else self.batches,
                sensitivity=sensitivity,
                calibration_data=calibration,
            )
        return keep_float_auto(
            self.layered_model,
            ranking,
            lambda q, p: self.trial(check, Recipe(q, p)),
            quantize=result.quantize,
            prune=result.prune,
            initial=Trial.from_result(result),
            metric_name=result.metric,
        )

    # --- one check of a concrete recipe --------------------------------------------

    def one(self, check: Check, *, lazy_size: bool = False) -> CompressionResult:
        """Compress, measure and judge ``check``'s recipe (or serve it from the cache); on a
        runtime, deploy it too and judge the deployed artifact. ``lazy_size``: a simulated
        check that fails without its size leaves it ``UNSIZED`` (no size budget asks)."""
        if check.runtime == "simulate":
            return self.simulated(check, lazy_size=lazy_size)
        # a compressor may come without a recipe: then there is no simulation beside it
        simulated = None if check.recipe == Recipe() else self.simulated(check)
        return self.deployed(check, simulated)

    def simulated(self, check: Check, *, lazy_size: bool = False) -> CompressionResult:
        """The recipe in simulation: fake-quantized (and pruned) weights in eager PyTorch."""
        started = time.perf_counter()
        store = self.store(check)
        stored = store.check()
        if stored is not None:
            timings = {"total": time.perf_counter() - started}
            served = self.verdict(check, stored, timings, cached=True)
            if stored.sized or (lazy_size and not served.passed):
                return served
            return self.sized(check, served)  # stored by a failed search trial: count it
        reference, remembered = self.reference(store)

        def passes(metric: float, zeros: float, broken: tuple[str, ...]) -> bool:
            unsized = CheckEntry(reference.metric, reference.size, metric, UNSIZED, zeros)
            return self.verdict(check, unsized, {}, cached=False, broken=broken).passed

        measured, timings, recovered, broken = self.measure_compressed(
            check, passes if lazy_size else None
        )
        entry = CheckEntry(reference.metric, reference.size, *measured)
        if not broken:  # a broken invariant is verified again on every run, never served
            store.put_check(entry)
        timings = {
            "float_evaluate": 0.0 if remembered else reference.seconds,
            **timings,
            "total": time.perf_counter() - started,
        }
        result = self.verdict(check, entry, timings, cached=False, broken=broken)
        return result if recovered is None else dataclasses.replace(result, recovery=recovered)

    def verified(self, check: Check, compressed: nn.Module, timings: dict[str, float]) -> tuple:
        """What ``compressed`` breaks of the check's recipe (the recipe-invariant gate), as
        words; nothing when the gate is off (``verify=False``, ``--compress-no-verify``)."""
        if not (check.verify and self.runner.verify) or check.recipe == Recipe():
            return ()
        begun = time.perf_counter()
        recipe = check.recipe
        found = verify_recipe(self.inputs.model, compressed, recipe.quantize, recipe.prune)
        timings["verify"] = time.perf_counter() - begun
        return tuple(violation.describe() for violation in found)

    def store(self, check: Check) -> CheckStore | NoStore:
        """Where the check's numbers are kept across sessions: nowhere without a cache, for a
        recovered check (its numbers depend on the recovery and its data too, which no
        fingerprint covers), or when something it depends on cannot be fingerprinted."""
        results = self.runner.results
        if results is None or self.inputs.recovery is not None:
            return NoStore()
        keys = self.runner.inputs.keys(
            check.recipe,
            model=(self.inputs.model_label, self.inputs.model),
            data=self.evaluation,
            metric=(self.inputs.metric_label, self.inputs.metric),
            calibration=self.calibration,
            unverified=not (check.verify and self.runner.verify),
        )
        return NoStore() if keys is None else CheckStore(results, keys)

    def reference(self, store: CheckStore | NoStore) -> tuple[Reference, bool]:
        """The float model's measurements, and whether this session had them already."""
        inputs = self.inputs
        metric_label = None if inputs.metric is None else inputs.metric_label
        key = ((inputs.model_label, inputs.data_label, metric_label), self.runner.device)
        objects = (inputs.model, self.batches, inputs.metric)
        return self.runner.references.get(key, objects, lambda: self.measure_float(store))

    def measure_float(self, store: CheckStore | NoStore) -> Reference:
        """From the persistent cache, else measured (and stored); a float model whose
        outputs or metric are NaN or infinite is a ``ModelError``."""
        stored = store.reference()
        if stored is not None:
            return Reference(self.finite(stored.metric), stored.size, 0.0)
        begun = time.perf_counter()
        model = self.inputs.model
        what = f"the float model {self.inputs.model_label}"
        metric = evaluate(
            model, self.batches, self.inputs.metric, device=self.runner.device, finite=what
        )
        reference = Reference(self.finite(metric), model_size(model), time.perf_counter() - begun)
        store.put_reference(ReferenceEntry(reference.metric, reference.size))
        return reference

    def finite(self, metric: float) -> float:
        if not math.isfinite(metric):
            inputs = self.inputs
            name = metric_kind(inputs.metric, inputs.metric_label, True).name
            raise ModelError(
                f"the float model {inputs.model_label} measures {name} {metric} on "
                f"{inputs.data_label}: there is nothing to compare the compressed model "
                "with; check the model, the data and the metric"
            )
        return metric

    def measure_compressed(
        self, check: Check, needs_size: SizeNeed = None
    ) -> tuple[tuple[float, int, float], dict[str, float], RecoveryResult | None, tuple]:
        """((metric, compressed size, sparsity), seconds by phase, RecoveryResult or None,
        broken invariants) of a fresh copy, recovered first when the inputs have one.
        ``needs_size``: asked, once the rest is measured, whether to count the file too
        (else the size is ``UNSIZED``); None: counted first, before the evaluation."""
        recipe = check.recipe
        begun = time.perf_counter()
        compressed = compress_model(
            self.inputs.model,
            quantize=recipe.quantize,
            prune=recipe.prune,
            calibration_data=self.calibration.batches,
        )
        timings = {"compress": time.perf_counter() - begun}
        target = resolve_device(self.runner.device)
        if model_device(compressed) != target:
            # our own copy: move it, rather than let evaluate copy it; a low-memory clone
            # shares the user's tensors, so it gets new ones rather than Module.to's in place
            if low_memory_enabled():
                move_clone(compressed, target)
            else:
                compressed.to(target)
        recovered = None
        if self.inputs.recovery is not None:
            begun = time.perf_counter()
            compressed, recovered = self.recover(compressed, recipe, target)
            timings["recover"] = time.perf_counter() - begun
        # the file size finds each weight on its grid, and the invariant gate asks the same
        with grid_memo():
            packed_size = UNSIZED
            if needs_size is None:
                begun = time.perf_counter()
                packed_size = compressed_size(compressed)  # the file the user would ship
                zeros = sparsity(compressed).overall  # the size's counts, read back
                timings["measure"] = time.perf_counter() - begun
            begun = time.perf_counter()
            metric = self.evaluate(compressed)
            timings["evaluate"] = time.perf_counter() - begun
            if recovered is not None:
                assert recovered.metric_before is not None  # recover() measured it
                recovered = recovered.with_metrics(recovered.metric_before, metric)
            if needs_size is not None:
                begun = time.perf_counter()
                zeros = sparsity(compressed).overall  # its counts serve the gate too
                timings["measure"] = time.perf_counter() - begun
            broken = self.verified(check, compressed, timings)
            if needs_size is not None and needs_size(metric, zeros, broken):
                begun = time.perf_counter()
                packed_size = compressed_size(compressed)
                timings["measure"] += time.perf_counter() - begun
        self.give_back(compressed)
        return (metric, packed_size, zeros), timings, recovered, broken

    def recover(
        self, compressed: nn.Module, recipe: Recipe, device: Any
    ) -> tuple[nn.Module, RecoveryResult]:
        """The recovered copy and its ``RecoveryResult`` (metric before recovery filled in).

        The masks come from the float model, so exactly the weights the recipe pruned are
        held at zero; the copy is re-quantized with the recipe after the recovery.
        """
        recovery = self.inputs.recovery
        assert recovery is not None
        masks = pruning_masks(self.inputs.model, recipe.prune)
        before = self.evaluate(compressed)
        result = recover_compressed(
            compressed,
            recovery.fn,
            recovery.data,
            quantize=recipe.quantize,
            prune=recipe.prune,
            masks={name: mask.to(device) for name, mask in masks.items()},
            calibration_data=self.calibration.batches,
        )
        # metric_after is the check's own evaluation of the recovered copy, filled in later
        return result.model, result.with_metrics(before, before)

    # --- a real runtime ------------------------------------------------------------

    def deployed(self, check: Check, simulated: CompressionResult | None) -> CompressionResult:
        """The check deployed on its runtime (or by its compressor): the artifact's metric,
        bytes and sparsity (from the cache when an earlier run deployed the same), and its
        latency against the float model when a budget asks (always measured: it is the
        machine's). ``simulated`` is the same recipe in simulation, when there is one."""
        if self.runner.device != "cpu":
            raise CompressError(
                f"a deployed check ({self.deployer(check)}) runs on the CPU; use "
                "--compress-device=cpu"
            )
        started = time.perf_counter()
        store = self.store(check)
        key = self.deploy_key(check)
        entry = None if key is None else store.deployed(key)
        served, artifact = entry is not None, None
        timings: dict[str, float] = {}
        broken: tuple[str, ...] = ()
        if entry is None:
            entry, artifact, broken = self.measure_deployed(check, simulated, timings)
            if key is not None and not broken:
                store.put_deployed(key, entry)
        latency = None
        if any(name in LATENCY_BUDGETS for name in check.budgets):
            artifact = artifact or self.deploy(check)[0]
            latency = time_deployed(
                self.inputs.model,
                artifact,
                self.batches,
                max_seconds=self.runner.latency_seconds,
                threads=self.runner.threads,
            )
            timings["latency"] = latency.seconds
        if simulated is not None:
            float_metric, float_size = simulated.float_metric, simulated.float_size
        else:
            reference = self.reference(store)[0]
            float_metric, float_size = reference.metric, reference.size
        numbers = CheckEntry(float_metric, float_size, entry.metric, entry.size, entry.sparsity)
        timings = {
            **(simulated.timings if simulated else {}),
            **timings,
            "total": time.perf_counter() - started + (simulated.seconds if simulated else 0.0),
        }
        result = self.verdict(
            check,
            numbers,
            timings,
            cached=served and (simulated is None or simulated.cached),
            broken=broken + (simulated.broken_invariants if simulated else ()),
            deployment={
                "runtime": self.deployer(check),
                "simulated_metric": None if simulated is None else simulated.compressed_metric,
                "simulated_size": None if simulated is None else simulated.compressed_size,
                "saved_as": entry.saved_as,
                "latency_measured": latency,
            },
        )
        return dataclasses.replace(result, recipe=self.recipe_words(check))

    def deployer(self, check: Check) -> str:
        """``onnxruntime``, or ``compressor <fixture>``."""
        if check.runtime == COMPRESSOR:
            return f"compressor {self.inputs.compressor_label}"
        return check.runtime

    def recipe_words(self, check: Check) -> str:
        if check.runtime != COMPRESSOR:
            return check.recipe.describe()
        if check.recipe == Recipe():
            return self.deployer(check)
        return f"{self.deployer(check)} (as {check.recipe.describe()})"

    def deploy_key(self, check: Check) -> str | None:
        """What the deployed entry is cached under besides the check's keys."""
        if check.runtime != COMPRESSOR:
            return check.runtime
        inputs = self.inputs
        return self.runner.inputs.compressor_key(inputs.compressor_label, inputs.compressor)

    def measure_deployed(
        self, check: Check, simulated: CompressionResult | None, timings: dict[str, float]
    ) -> tuple[DeployedEntry, Deployed, tuple[str, ...]]:
        begun = time.perf_counter()
        artifact, module = self.deploy(check)
        timings["deploy"] = time.perf_counter() - begun
        begun = time.perf_counter()
        metric = self.evaluate(module if module is not None else PredictModule(artifact))
        timings["evaluate_deployed"] = time.perf_counter() - begun
        broken: tuple[str, ...] = ()
        if module is not None:
            broken = self.verified(check, module, timings)  # the recipe it claims, if given
            zeros = sparsity(module).overall
        elif simulated is not None and check.runtime != COMPRESSOR:
            zeros = simulated.sparsity  # the runtime got the recipe's pruned weights
        elif "min_sparsity" in check.budgets:
            raise CompressError(
                f"min_sparsity needs the compressed weights, and {self.deployer(check)} "
                "returned Compressed(...), whose weights cannot be read: return the "
                "torch.nn.Module to have its sparsity measured"
            )
        else:
            zeros = math.nan
        entry = DeployedEntry(metric, artifact.size_bytes, artifact.saved_as, zeros)
        return entry, artifact, broken

    def deploy(self, check: Check) -> tuple[Deployed, nn.Module | None]:
        recipe = check.recipe
        if check.runtime == COMPRESSOR:
            calibration = self.calibration.batches
            return from_compressor(
                self.inputs.compressor,
                self.deployer(check),
                self.inputs.model,
                calibration,
                self.runner.workdir(),
            )
        artifact = deploy(
            check.runtime,
            self.inputs.model,
            recipe,
            self.batches,
            self.calibration.batches if recipe.calibrates else None,
            self.runner.workdir(),
            self.runner.threads,
            exported=self.exported(check) if check.runtime == "onnxruntime" else None,
        )
        return artifact, None

    def exported(self, check: Check) -> Path:
        """The float model exported to ONNX (pruned by the recipe), once per model, pruning
        and input signature: kept across sessions under its fingerprint when the model has
        one, else once per session."""
        inputs, prune = self.inputs, check.recipe.prune
        example = example_inputs(self.batches)
        fingerprint = self.runner.inputs.model_key(inputs.model_label, inputs.model)
        folder = self.runner.exports if fingerprint is not None else None
        key = combine(
            fingerprint or f"session {id(inputs.model)}",
            repr(prune),
            describe_inputs(example),
            environment_fingerprint(),
            runtime_versions("onnxruntime"),
        )
        path = (folder or self.runner.scratch()) / f"{key}.onnx"
        if not path.exists():
            export_float(inputs.model, example, path, prune)
        return path

    # --- the verdict ---------------------------------------------------------------

    def verdict(
        self,
        check: Check,
        entry: CheckEntry,
        timings: dict[str, float],
        *,
        cached: bool,
        deployment: dict[str, Any] | None = None,
        broken: tuple[str, ...] = (),
    ) -> CompressionResult:
        """The result of measured (or stored) numbers: drops, ratio, and the budgets' checks."""
        metric = self.metric(check)
        drop = metric.drop(entry.float_metric, entry.compressed_metric)
        result = CompressionResult(
            float_metric=entry.float_metric,
            compressed_metric=entry.compressed_metric,
            accuracy_drop=drop,
            relative_drop=_relative(drop, entry.float_metric),
            float_size=entry.float_size,
            compressed_size=entry.compressed_size,
            size_ratio=(entry.compressed_size / entry.float_size if entry.float_size else math.inf),
            sparsity=entry.sparsity,
            recipe=check.recipe.describe(),
            quantize=check.recipe.quantize,
            prune=check.recipe.prune,
            budgets=check.budgets,
            timings=timings,
            metric=metric.name,
            higher_is_better=check.higher_is_better,
            model=self.inputs.model_label,
            data=self.inputs.data_label,
            device=self.runner.device,
            cached=cached,
            skipped_layers=self.skipped(check.recipe),
            broken_invariants=broken,
            **(deployment or {}),
        )
        return result.judged()


# Whether a copy, measured but for its size (metric, sparsity, broken invariants), needs it.
SizeNeed = Callable[[float, float, tuple[str, ...]], bool] | None


def _relative(drop: float, reference: float) -> float:
    # A zero float metric has no relative scale: no change is 0, any change is infinite.
    if reference == 0:
        return 0.0 if drop == 0 else math.copysign(math.inf, drop)
    return drop / abs(reference)
