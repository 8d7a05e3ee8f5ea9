"""Measurements of a model: its metric on data, its size in bytes, its sparsity."""

from __future__ import annotations

import io
import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import IO, Any, cast

import numpy as np
import torch
from torch import nn

from ..errors import CompressError, DataError, MetricError, ModelError
from .apply import copy_model, low_memory_enabled
from .batches import call_model, describe_inputs, model_device, split_batch, to_device
from .layers import compressible_layers
from .lazy import move_clone, shallow_clone
from .metrics import BuiltinMetric, builtin_metric, call_inputs, split_for
from .record import remember_nonzero, remembered_nonzero
from .state import eval_mode

BatchMetric = Callable[[Any, Any], tuple[Any, Any]]
# What a relative built-in metric compares with: the float model, or its read outputs.
Reference = nn.Module | Sequence[torch.Tensor] | None


@dataclass(frozen=True)
class ModelMetric:
    """A whole-model metric ``fn(model, data) -> float``, declared with ``model_metric``."""

    fn: Callable[[nn.Module, Any], float]

    def __call__(self, model: nn.Module, data: Any) -> float:
        return self.fn(model, data)

    @property
    def __name__(self) -> str:  # reports name the metric by its function
        return getattr(self.fn, "__name__", type(self.fn).__name__)


def model_metric(fn: Callable[[nn.Module, Any], float]) -> ModelMetric:
    """Declare ``fn(model, data) -> float`` as a whole-model metric (perplexity, mAP, ...).

    Without this wrapper a callable metric is a batch metric ``(outputs, targets) ->
    (sum, count)``; the two kinds are never guessed from a signature.
    """
    if not callable(fn):
        raise CompressError(f"model_metric needs a callable fn(model, data) -> float, got {fn!r}")
    return ModelMetric(fn)


def top1_accuracy(outputs: Any, targets: torch.Tensor) -> tuple[torch.Tensor, int]:
    """The default batch metric: (correct predictions, samples) for class scores.

    ``outputs`` are scores with classes on the last axis, or an object with ``.logits``
    (a Hugging Face model's output); ``targets`` are class indices of the other axes' shape.
    """
    outputs = getattr(outputs, "logits", outputs)
    if not isinstance(outputs, torch.Tensor) or outputs.dim() < 2:
        shape = tuple(outputs.shape) if isinstance(outputs, torch.Tensor) else type(outputs)
        raise ModelError(
            f"top-1 accuracy needs class scores of shape (batch, classes), got {shape}; "
            "pass a batch metric (outputs, targets) -> (sum, count) or model_metric(fn)"
        )
    predictions = outputs.argmax(dim=-1)
    targets = torch.as_tensor(targets, device=predictions.device)
    if predictions.shape != targets.shape:
        # Broadcasting would compare every prediction with every target and report nonsense.
        raise DataError(
            f"top-1 accuracy needs targets of shape {tuple(predictions.shape)} (class indices "
            f"for scores of shape {tuple(outputs.shape)}), got {tuple(targets.shape)}; for "
            "one-hot or other targets pass a batch metric (outputs, targets) -> (sum, count)"
        )
    if targets.is_floating_point() or targets.is_complex():
        # Predicted class indices never equal soft or regression targets: 0 % -> 0 %, "ok".
        raise DataError(
            f"top-1 accuracy needs integer class indices as targets, got {targets.dtype} "
            "targets; convert class labels with .long(), or for soft, one-hot or regression "
            "targets pass a batch metric (outputs, targets) -> (sum, count)"
        )
    if outputs.is_floating_point() and bool(outputs.isnan().any()):
        # argmax would read NaN scores as a confident class: a NaN is no prediction
        return torch.tensor(float("nan")), targets.numel()
    return (predictions == targets).sum(), targets.numel()


def evaluate(
    model: nn.Module,
    data: Iterable[Any],
    metric: BatchMetric | ModelMetric | BuiltinMetric | str | None = None,
    device: str | torch.device = "cpu",
    *,
    finite: str | None = None,
    reference: Reference = None,
) -> float:
    """The model's metric over ``data``: top-1 accuracy of (inputs, targets) batches by default.

    ``metric`` is a batch metric, a ``model_metric``, a built-in metric or its name
    (``"cosine"``, ``"top5"``, ``"perplexity"``, ...). A built-in metric relative to the
    float model (cosine, mse, relative_error) compares with ``reference``: the float
    model (run on the same batches), its outputs as ``reference_outputs`` returns them,
    or None to compare the model with itself (the float model's own value).

    Runs in eval mode under ``torch.inference_mode()`` and restores every module's own
    train/eval flag afterwards. A model that lives elsewhere than ``device`` is
    evaluated as a copy moved there, so the model itself is never moved. With ``finite``
    (the model in words), outputs holding NaN or infinity are a ``ModelError``.
    """
    device = torch.device(device)
    model = _on_device(model, device)
    if isinstance(metric, str):
        metric = builtin_metric(metric)
    if isinstance(reference, nn.Module):
        reference = _on_device(reference, device)
    with eval_mode(model), torch.inference_mode():
        if isinstance(metric, ModelMetric):
            return float(metric(model, data))
        if isinstance(metric, BuiltinMetric):
            if isinstance(reference, nn.Module):
                with eval_mode(reference):
                    return _builtin(model, data, metric, device, finite, reference)
            return _builtin(model, data, metric, device, finite, reference)
        return _batch_metric(model, data, metric or top1_accuracy, device, finite)


def _on_device(model: nn.Module, device: torch.device) -> nn.Module:
    if not isinstance(model, nn.Module):
        raise ModelError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if model_device(model) == device:
        return model
    if low_memory_enabled():  # no second copy in host memory: new tensors on the device only
        return move_clone(shallow_clone(model), device)
    return copy_model(model).to(device)


def _builtin(
    model: nn.Module,
    data: Iterable[Any],
    metric: BuiltinMetric,
    device: torch.device,
    finite: str | None,
    reference: Reference,
) -> float:
    """A built-in metric: each batch's (sum, count), with the float outputs when relative."""
    total = 0.0
    count = 0.0
    for index, batch in enumerate(data):
        inputs, targets = split_for(metric, batch)
        inputs = to_device(inputs, device)
        outputs = _outputs(model, call_inputs(metric, inputs), index)
        if finite is not None and not _all_finite(outputs):
            raise ModelError(
                f"{finite} gives NaN or infinite outputs on batch {index}: it must be "
                "measurable before anything is compressed (check its weights and the data)"
            )
        other = to_device(targets, device)
        if metric.relative:
            if reference is None:
                other = metric.read(outputs)[0]
            elif isinstance(reference, nn.Module):
                other = metric.read(_outputs(reference, call_inputs(metric, inputs), index))[0]
            else:
                other = reference[index]
        result = metric.batch(outputs, other, inputs)
        total += _metric_number(result[0], "sum", index)
        count += _metric_number(result[1], "count", index)
    if count == 0:
        raise DataError(
            "data yielded no samples (for perplexity: no label that is not ignored): the "
            "metric of an empty data set is undefined"
        )
    return metric.finish(total / count)


def reference_outputs(
    model: nn.Module, data: Iterable[Any], metric: BuiltinMetric, device: str | torch.device
) -> list[torch.Tensor]:
    """The float model's outputs as ``metric`` reads them, one tensor per batch: what a
    relative metric compares every compressed copy with (``evaluate(reference=...)``)."""
    device = torch.device(device)
    model = _on_device(model, device)
    read = []
    with eval_mode(model), torch.inference_mode():
        for index, batch in enumerate(data):
            inputs = to_device(split_for(metric, batch)[0], device)
            read.append(metric.read(_outputs(model, call_inputs(metric, inputs), index))[0])
    return read


def metric_source(
    model: nn.Module, data: Iterable[Any], metric: BuiltinMetric, device: str | torch.device
) -> str | None:
    """Which output ``metric`` reads from ``model`` (``"logits"``, ...; None for a bare
    tensor), from its outputs on the first batch."""
    if metric.spec.key is not None:
        return metric.spec.key
    device = torch.device(device)
    model = _on_device(model, device)
    with eval_mode(model), torch.inference_mode():
        for index, batch in enumerate(data):
            inputs = to_device(split_for(metric, batch)[0], device)
            return metric.read(_outputs(model, call_inputs(metric, inputs), index))[1]
    return None


def _batch_metric(
    model: nn.Module,
    data: Iterable[Any],
    metric: BatchMetric,
    device: torch.device,
    finite: str | None = None,
) -> float:
    if not callable(metric):
        raise CompressError(
            f"metric must be a batch metric (outputs, targets) -> (sum, count) or "
            f"model_metric(fn), got {metric!r}"
        )
    total = 0.0
    count = 0.0
    for index, batch in enumerate(data):
        inputs, targets = split_batch(batch, need_targets=True)
        outputs = _outputs(model, to_device(inputs, device), index)
        if finite is not None and not _all_finite(outputs):
            raise ModelError(
                f"{finite} gives NaN or infinite outputs on batch {index}: it must be "
                "measurable before anything is compressed (check its weights and the data)"
            )
        result = metric(outputs, to_device(targets, device))
        if not (isinstance(result, (tuple, list)) and len(result) == 2):
            raise MetricError(
                f"a batch metric must return (sum, count), got {type(result).__name__}; "
                "wrap a whole-model metric with model_metric(fn)"
            )
        total += _metric_number(result[0], "sum", index)
        samples = _metric_number(result[1], "count", index)
        if not (samples >= 0 and math.isfinite(samples)):
            raise MetricError(
                f"a batch metric's count must be a positive number of samples (0 for a batch "
                f"with none); on batch {index} it returned {samples!r}"
            )
        count += samples
    if count == 0:
        raise DataError("data yielded no samples: the metric of an empty data set is undefined")
    return total / count


# What torch says when a batch's shape or type does not fit a layer (a Linear's mat1 and
# mat2, a convolution's channels, a reshape's size): the data's fault, named as such.
_MISFIT = re.compile(r"shape|size|dimension|channels|mat1|mat2|dtype|expected input", re.I)


def _outputs(model: nn.Module, inputs: Any, index: int) -> Any:
    """``model(inputs)``; a batch that does not fit the model is a ``DataError`` naming it."""
    try:
        return call_model(model, inputs)
    except torch.cuda.OutOfMemoryError:  # says "max_split_size_mb": not a misfit
        raise
    except RuntimeError as error:
        message = str(error).strip().splitlines()[0] if str(error).strip() else ""
        if not _MISFIT.search(message):
            raise
    raise DataError(
        f"batch {index} does not fit the model: its inputs are {describe_inputs(inputs)}, "
        f"and the model raised: {message}"
    )


def _all_finite(outputs: Any) -> bool:
    """Whether every floating tensor in ``outputs`` (or its ``.logits``) is finite."""
    outputs = getattr(outputs, "logits", outputs)
    if isinstance(outputs, torch.Tensor):
        return not outputs.is_floating_point() or bool(torch.isfinite(outputs).all())
    if isinstance(outputs, Mapping):
        return all(_all_finite(value) for value in outputs.values())
    if isinstance(outputs, (tuple, list)):
        return all(_all_finite(value) for value in outputs)
    return True


def _metric_number(value: Any, what: str, index: int) -> float:
    """A batch metric's sum or count as a float; a vector or a non-number is a ``MetricError``."""
    if isinstance(value, torch.Tensor) and value.numel() != 1:
        raise MetricError(
            f"a batch metric must return (sum, count) as numbers; on batch {index} its {what} "
            f"is a tensor of shape {tuple(value.shape)}: reduce it, e.g. (predictions == "
            "targets).sum()"
        )
    try:
        return float(value)
    except (TypeError, ValueError):
        raise MetricError(
            f"a batch metric must return (sum, count) as numbers; on batch {index} its {what} "
            f"is a {type(value).__name__}"
        ) from None


def model_size(model: nn.Module) -> int:
    """Bytes of ``torch.save(model.state_dict())``: the float model as it is usually shipped."""
    counter = _CountingWriter()
    torch.save(model.state_dict(), cast(IO[bytes], counter))
    return counter.size


class _CountingWriter(io.RawIOBase):
    """A write-only stream that keeps only its length: ``torch.save`` into a BytesIO held a
    copy of the whole model (and more while the buffer grew) just to measure it."""

    def __init__(self) -> None:
        super().__init__()
        self.size = 0
        self.position = 0

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        n = memoryview(data).nbytes
        self.position += n
        self.size = max(self.size, self.position)
        return n

    def tell(self) -> int:
        return self.position

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self.position, io.SEEK_END: self.size}[whence]
        self.position = base + offset
        return self.position


@dataclass(frozen=True)
class SparsityReport:
    """Fraction of exact zeros among the compressible weights, overall and per layer."""

    overall: float
    per_layer: dict[str, float] = field(default_factory=dict)

    def __float__(self) -> float:
        return self.overall


# dtypes numpy counts exactly as torch does (``-0.0`` is zero, NaN is not)
_NUMPY_COUNTED = (torch.float16, torch.float32, torch.float64)


def count_nonzero(tensor: torch.Tensor) -> int:
    """``torch.count_nonzero(tensor)`` as an int, without its slow path: on the CPU torch
    branches per element, so a pruned float weight (zeros at random places) costs it about
    ten times a dense one, while numpy's vectorized count reads the same memory for both
    (no copy: a view of a plain contiguous CPU tensor). A tensor subclass (the low-memory
    mode's compressed weights) or another device or dtype goes to torch. Inside
    ``grid_memo``, a count taken of the same tensor (here or by the file size) is read
    back."""
    counted = remembered_nonzero(tensor)
    if counted is not None:
        return counted
    if (
        type(tensor) is torch.Tensor
        and tensor.device.type == "cpu"
        and tensor.dtype in _NUMPY_COUNTED
        and tensor.is_contiguous()
    ):
        counted = int(np.count_nonzero(tensor.detach().numpy()))
    else:
        counted = int(torch.count_nonzero(tensor))
    remember_nonzero(tensor, counted)
    return counted


def sparsity(model: nn.Module) -> SparsityReport:
    """Exact zeros among the weights of the compressible layers (each tied weight once)."""
    zeros = 0
    total = 0
    per_layer = {}
    for layer in compressible_layers(model):
        weight = layer.module.weight.detach()
        layer_zeros = weight.numel() - count_nonzero(weight)  # no bool copy
        per_layer[layer.name] = layer_zeros / weight.numel() if weight.numel() else 0.0
        zeros += layer_zeros
        total += weight.numel()
    return SparsityReport(zeros / total if total else 0.0, per_layer)
