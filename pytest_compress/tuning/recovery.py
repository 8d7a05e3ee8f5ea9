"""Recovery: a short fine-tune (or distillation) of the compressed copy, keeping it compressed.

``recover_compressed(compressed, recovery_fn, data, quantize=..., prune=...)`` runs the
caller's ``recovery_fn(model, data) -> model`` on a copy of the compressed model and
then puts the recipe back:

1. activation fake-quantize hooks are taken off the copy before ``recovery_fn`` runs
   (their rounding has no gradient, so they would stop any fine-tune); activation
   pruning hooks stay, they are part of the pruned model;
2. after ``recovery_fn``, every pruned weight is set back to exactly zero. A weight the
   recovery moved off zero is counted per parameter (``RecoveryResult.unzeroed``) and
   reported: with ``on_unzeroed="rezero"`` (the default) it is zeroed again and the
   report says so; with ``on_unzeroed="raise"`` it is a ``ValueError``. The default
   forgives because an ordinary optimiser step moves pruned weights (their gradient is
   rarely zero), and re-applying the mask is the standard remedy;
3. the weights are quantized again with ``quantize`` (fresh ranges from the recovered
   weights; activation ranges re-calibrated), so every quantized weight ends on its
   grid and ``save_compressed`` stores it exactly;
4. the pruned positions are verified to be zero once more (0.0 is always on the grid).

Which weights are "pruned" is given by ``masks`` (parameter name -> bool tensor, True
where pruned). ``pruning_masks(model, prune)`` computes them exactly from the float
model: the weights zero after pruning. Without ``masks``, the zeros of the compressed
copy in the layers ``prune`` selects are taken; that also freezes the few weights that
quantization rounded to zero, which is harmless but slightly stricter.

``finetune(epochs, lr)`` makes a recovery function for classifiers: cross-entropy,
SGD or Adam, deterministic for a seed, and mask-aware (the weights that are exactly
zero when it starts get no update), so it never needs re-zeroing.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..engine.activations import ActivationFakeQuantize, remove_activation_hooks
from ..engine.apply import copy_model, prune_model, quantize_model
from ..engine.batches import call_model, model_device, split_batch, to_device
from ..engine.layers import compressible_layers
from ..engine.record import get_record
from ..engine.specs import PruneSpec, QuantSpec, as_prune_spec, as_quant_spec
from ..engine.state import preserved_modes, train_mode
from ..errors import DataError, ModelError, SpecError
from ..metrics import MetricKind

ON_UNZEROED = ("rezero", "raise")
OPTIMIZERS = ("sgd", "adam")

RecoveryFn = Callable[[nn.Module, Any], nn.Module]


def pruning_masks(model: nn.Module, prune: PruneSpec | None) -> dict[str, torch.Tensor]:
    """Per weight name, True where ``prune`` leaves the weight zero (exact: from the float model).

    Activation pruning has no weight mask; a spec that prunes no weights gives ``{}``.
    """
    if prune is None or not prune.prunes_weights:
        return {}
    pruned = prune_model(model, replace(prune, activation_threshold=None))
    return zero_masks(pruned, prune)


def zero_masks(model: nn.Module, prune: PruneSpec | None) -> dict[str, torch.Tensor]:
    """Per weight name, True where a weight of a layer ``prune`` selects is exactly zero."""
    if prune is None or not prune.prunes_weights:
        return {}
    return {
        layer.weight_name: layer.module.weight.detach() == 0
        for layer in compressible_layers(model, prune.include, prune.exclude)
    }


def _check_masks(model: nn.Module, masks: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    params = dict(model.named_parameters(remove_duplicate=False))
    checked = {}
    for name, mask in masks.items():
        if name not in params:
            raise SpecError(
                f"masks names {name!r}, which is not a parameter of the compressed model"
            )
        if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool:
            raise SpecError(f"masks[{name!r}] must be a bool tensor (True = pruned)")
        if mask.shape != params[name].shape:
            raise SpecError(
                f"masks[{name!r}] has shape {tuple(mask.shape)}, the parameter "
                f"{tuple(params[name].shape)}"
            )
        checked[name] = mask
    return checked


def _check_same_shape(before: nn.Module, after: object) -> nn.Module:
    if not isinstance(after, nn.Module):
        raise ModelError(
            f"recovery_fn must return the recovered model (a torch.nn.Module), "
            f"got {type(after).__name__}"
        )
    old = {key: tuple(value.shape) for key, value in before.state_dict().items()}
    new = {key: tuple(value.shape) for key, value in after.state_dict().items()}
    if old != new:
        changed = sorted(set(old) ^ set(new)) or sorted(k for k in old if old[k] != new[k])
        raise ModelError(
            "recovery_fn must return a model with the compressed model's parameters and "
            f"shapes; these differ: {changed[:5]}"
        )
    return after


def recover_compressed(
    compressed: nn.Module,
    recovery_fn: RecoveryFn,
    data: Any,
    *,
    quantize: QuantSpec | str | None = None,
    prune: PruneSpec | float | str | None = None,
    masks: Mapping[str, torch.Tensor] | None = None,
    calibration_data: Iterable[Any] | None = None,
    evaluate: Callable[[nn.Module], float] | None = None,
    on_unzeroed: str = "rezero",
    metric_name: str = "accuracy",
    higher_is_better: bool = True,
) -> RecoveryResult:
    """Run ``recovery_fn(copy, data)`` and bring the result back onto the recipe.

    ``quantize`` / ``prune`` are the recipe ``compressed`` was made with: ``quantize``
    is required when the model is quantized (to re-quantize), ``prune`` (or ``masks``)
    says which weights must stay zero. ``calibration_data`` defaults to ``data``.
    With ``evaluate(model) -> float`` the metric is measured before and after recovery.
    ``compressed`` is never modified.
    """
    _check_arguments(compressed, recovery_fn, on_unzeroed, evaluate)
    # an exported function: shorthands are parsed here, where a user hands them in
    quant_spec = as_quant_spec(quantize)
    prune_spec = as_prune_spec(prune)
    if quant_spec is None and get_record(compressed).quantized:
        raise SpecError(
            "quantize must be given: the compressed model is quantized, and recovery "
            "re-quantizes it with the same spec after recovery_fn"
        )
    if masks is None:
        masks = zero_masks(compressed, prune_spec) if prune_spec is not None else {}
    masks = _check_masks(compressed, masks)

    before = float(evaluate(compressed)) if evaluate is not None else None
    recovered = _run_recovery(compressed, recovery_fn, data)
    unzeroed = _rezero(recovered, masks, on_unzeroed)
    final = recovered
    if quant_spec is not None:
        final = quantize_model(
            recovered, quant_spec, calibration_data if calibration_data is not None else data
        )
    for name, mask in masks.items():
        param = final.get_parameter(name)
        if bool((param.detach()[mask.to(param.device)] != 0).any()):
            # 0.0 is exactly representable on every grid, so this is a bug, not user error.
            raise RuntimeError(f"{name}: a pruned weight is nonzero after re-quantization")
    after = float(evaluate(final)) if evaluate is not None else None
    return RecoveryResult(
        model=final,
        pruned_weights=sum(int(mask.sum()) for mask in masks.values()),
        unzeroed=unzeroed,
        requantized=quant_spec is not None,
        metric_before=before,
        metric_after=after,
        metric_name=metric_name,
        higher_is_better=higher_is_better,
    )


def _check_arguments(
    compressed: object, recovery_fn: object, on_unzeroed: str, evaluate: object
) -> None:
    if not isinstance(compressed, nn.Module):
        raise SpecError(f"compressed must be a torch.nn.Module, got {type(compressed).__name__}")
    if not callable(recovery_fn):
        raise SpecError(
            f"recovery_fn must be a callable (model, data) -> model, got {recovery_fn!r}"
        )
    if on_unzeroed not in ON_UNZEROED:
        raise SpecError(f"on_unzeroed must be one of {ON_UNZEROED}, got {on_unzeroed!r}")
    if evaluate is not None and not callable(evaluate):
        raise SpecError(f"evaluate must be a callable evaluate(model) -> float, got {evaluate!r}")


def _run_recovery(compressed: nn.Module, recovery_fn: RecoveryFn, data: Any) -> nn.Module:
    """``recovery_fn`` on a copy without rounding hooks; every module keeps its train/eval flag."""
    work = copy_model(compressed)
    remove_activation_hooks(work, (ActivationFakeQuantize,))  # pruning hooks stay
    with preserved_modes(work) as modes:
        recovered = _check_same_shape(work, recovery_fn(work, data))
    modes.apply_by_name(recovered)  # also when recovery_fn returned another model
    return recovered


def _rezero(
    recovered: nn.Module, masks: Mapping[str, torch.Tensor], on_unzeroed: str
) -> dict[str, int]:
    """Set every pruned weight back to zero; per parameter, how many had moved off it."""
    unzeroed = {}
    with torch.no_grad():
        for name, mask in masks.items():
            param = recovered.get_parameter(name)
            moved = int((param[mask.to(param.device)] != 0).sum())
            if moved:
                unzeroed[name] = moved
            param.masked_fill_(mask.to(param.device), 0.0)
    if unzeroed and on_unzeroed == "raise":
        total = sum(unzeroed.values())
        raise ModelError(
            f"recovery_fn moved {total:,} pruned weights off zero ({_per_parameter(unzeroed)}); "
            "keep pruned weights at zero (mask their gradients) or pass on_unzeroed='rezero'"
        )
    return unzeroed


def _per_parameter(counts: Mapping[str, int]) -> str:
    return ", ".join(f"{name} {count:,}" for name, count in counts.items())


@dataclass(frozen=True)
class RecoveryResult:
    """The recovered, re-compressed model and what recovery did.

    - ``pruned_weights``: weights held at exactly zero through recovery.
    - ``unzeroed``: per parameter, the pruned weights ``recovery_fn`` had moved off zero
      (set back to zero; empty when it kept them).
    - ``metric_before`` / ``metric_after``: the metric of the compressed model before and
      after recovery, when measured (``with_metrics`` fills them in for a caller that
      evaluates itself).
    """

    model: nn.Module = field(repr=False, compare=False)
    pruned_weights: int
    unzeroed: dict[str, int]
    requantized: bool
    metric_before: float | None = None
    metric_after: float | None = None
    metric_name: str = "accuracy"
    higher_is_better: bool = True

    def with_metrics(self, before: float, after: float) -> RecoveryResult:
        return replace(self, metric_before=float(before), metric_after=float(after))

    @property
    def gain(self) -> float | None:
        """How much recovery improved the metric (positive = better), when measured."""
        if self.metric_before is None or self.metric_after is None:
            return None
        change = self.metric_after - self.metric_before
        return change if self.higher_is_better else -change

    def summary(self) -> str:
        """``recovery: accuracy 61.0% -> 96.5% (+35.5 pp)``, and any re-zeroing."""
        metric = MetricKind.named(self.metric_name)
        if self.metric_before is not None and self.metric_after is not None:
            change = self.metric_after - self.metric_before
            sign = "-" if change < 0 else "+"
            text = (
                f"recovery: {self.metric_name} {metric.value(self.metric_before)} -> "
                f"{metric.value(self.metric_after)} "
                f"({sign}{metric.difference(abs(change))})"
            )
        else:
            text = "recovery: applied"
        if self.unzeroed:
            total = sum(self.unzeroed.values())
            text += (
                f"; {total:,} pruned weights moved off zero by the recovery were re-zeroed "
                f"({_per_parameter(self.unzeroed)})"
            )
        return text

    def to_dict(self) -> dict[str, Any]:
        return {
            "metric_before": self.metric_before,
            "metric_after": self.metric_after,
            "pruned_weights": self.pruned_weights,
            "unzeroed": dict(self.unzeroed),
            "requantized": self.requantized,
        }


@dataclass(frozen=True)
class FineTune:
    """A recovery function: ``epochs`` passes of cross-entropy training over the data.

    Made by ``finetune``; call it as ``recovery_fn(model, data) -> model``. It trains the
    model in place and returns it. Weights of compressible layers that are exactly zero
    when it starts (the pruned ones) get no update: their gradients are zeroed before
    each step and the weights re-zeroed after it (momentum or decay could move them).
    The global random state is untouched: the run is seeded inside a forked RNG.
    """

    epochs: int = 1
    lr: float = 1e-3
    optimizer: str = "adam"
    seed: int = 0
    momentum: float = 0.9
    weight_decay: float = 0.0

    def __post_init__(self) -> None:
        if isinstance(self.epochs, bool) or not isinstance(self.epochs, int) or self.epochs < 1:
            raise SpecError(f"epochs must be an int >= 1, got {self.epochs!r}")
        for name in ("lr", "momentum", "weight_decay"):
            value = getattr(self, name)
            low_ok = value > 0 if name == "lr" else value >= 0
            if (
                isinstance(value, bool)
                or not isinstance(value, (int, float))
                or not (math.isfinite(value) and low_ok)
            ):
                bound = "> 0" if name == "lr" else ">= 0"
                raise SpecError(f"{name} must be a finite number {bound}, got {value!r}")
        if self.optimizer not in OPTIMIZERS:
            raise SpecError(f"optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise SpecError(f"seed must be an int, got {self.seed!r}")

    def __call__(self, model: nn.Module, data: Iterable[Any]) -> nn.Module:
        frozen = {
            layer.module.weight: layer.module.weight.detach() == 0
            for layer in compressible_layers(model)
        }
        params = [p for p in model.parameters() if p.requires_grad]
        if not params:
            raise ModelError("finetune: the model has no parameter with requires_grad=True")
        if self.optimizer == "sgd":
            optimizer: torch.optim.Optimizer = torch.optim.SGD(
                params, lr=self.lr, momentum=self.momentum, weight_decay=self.weight_decay
            )
        else:
            optimizer = torch.optim.Adam(params, lr=self.lr, weight_decay=self.weight_decay)
        device = model_device(model)
        cuda = [device.index or 0] if device.type == "cuda" else []
        with train_mode(model), torch.random.fork_rng(devices=cuda):
            torch.manual_seed(self.seed)
            for _ in range(self.epochs):
                batches = 0
                for batch in data:
                    self._step(model, optimizer, frozen, batch, device)
                    batches += 1
                if batches == 0:
                    raise DataError("finetune: data yielded no batches")
        return model

    @staticmethod
    def _step(
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        frozen: dict[nn.Parameter, torch.Tensor],
        batch: Any,
        device: torch.device,
    ) -> None:
        inputs, targets = split_batch(batch, need_targets=True)
        outputs = call_model(model, to_device(inputs, device))
        loss = F.cross_entropy(outputs, to_device(targets, device))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        for weight, mask in frozen.items():
            if weight.grad is not None:
                weight.grad.masked_fill_(mask, 0.0)
        optimizer.step()
        with torch.no_grad():
            for weight, mask in frozen.items():
                weight.masked_fill_(mask, 0.0)


def finetune(
    epochs: int = 1,
    lr: float = 1e-3,
    *,
    optimizer: str = "adam",
    seed: int = 0,
    momentum: float = 0.9,
    weight_decay: float = 0.0,
) -> FineTune:
    """A recovery function ``(model, data) -> model``: a short, seeded, mask-aware fine-tune.

    ``optimizer`` is ``"adam"`` or ``"sgd"`` (with ``momentum``); the loss is
    cross-entropy of ``(inputs, targets)`` batches, so it suits classifiers. Every
    argument is validated here, not on first use.
    """
    return FineTune(
        epochs=epochs,
        lr=lr,
        optimizer=optimizer,
        seed=seed,
        momentum=momentum,
        weight_decay=weight_decay,
    )
