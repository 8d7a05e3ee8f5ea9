"""The built-in metrics: top-k accuracy, cosine, mse, relative error, perplexity.

Each is a ``BuiltinMetric``, made by its function (``topk_accuracy``,
``cosine_similarity``, ``mean_squared_error``, ``relative_error``, ``perplexity``) or by
name (``builtin_metric("cosine(pooler_output)")``); ``evaluate`` runs them. They read
the outputs as Hugging Face models return them, without importing transformers: a
tensor, or the first of ``sentence_embedding``, ``logits`` and ``last_hidden_state``
found as a mapping key or an attribute (a ``ModelOutput`` is both), or the key given.

``cosine``, ``mse`` and ``relative_error`` compare the compressed model's outputs with
the float model's on the same batches, so the data needs no targets. Outputs of shape
(batch, tokens, features) are read per real token: the batch's ``attention_mask`` (its
inputs a dict holding one) weighs the tokens, so padding counts for nothing.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from ..errors import CompressError, DataError, ModelError
from ..metrics import BuiltinName, MetricKind, builtin_name, unknown_hint
from .batches import split_batch

# The outputs a metric reads when none is named, in this order.
OUTPUT_KEYS = ("sentence_embedding", "logits", "last_hidden_state")


@dataclass(frozen=True)
class BuiltinMetric:
    """A built-in metric; ``spec`` says which (``BuiltinName``: base, k, output key)."""

    spec: BuiltinName
    ignore_index: int = -100

    @property
    def __name__(self) -> str:  # reports name the metric by it
        return self.spec.named(self.spec.key)

    @property
    def relative(self) -> bool:
        return self.spec.relative

    def kind(self, source: str | None = None) -> MetricKind:
        """Its name (saying which output it read), direction and unit."""
        return self.spec.kind(self.spec.key if source is None else source)

    def read(self, outputs: Any) -> tuple[torch.Tensor, str | None]:
        """(the tensor it reads, the name of that output or None for a bare tensor)."""
        return pick_output(outputs, self.spec.key)

    def finish(self, mean: float) -> float:
        """The metric from the mean of its batch sums: exp for perplexity."""
        if self.spec.base != "perplexity":
            return mean
        return math.exp(mean) if mean < 700 else math.inf

    def batch(self, outputs: Any, other: Any, inputs: Any) -> tuple[torch.Tensor, Any]:
        """(sum, count) of one batch. ``other`` is the float model's read output for a
        relative metric, the targets for top-k, the labels (or None) for perplexity."""
        values, _ = self.read(outputs)
        base = self.spec.base
        if base == "top":
            return _topk(values, other, self.spec.k)
        if base == "perplexity":
            return _next_token_loss(values, _labels(other, inputs), self.ignore_index)
        mask = attention_mask(inputs, values)
        if base == "cosine":
            return _cosine(values, other, mask)
        if base == "mse":
            return _squared_error(values, other, mask)
        return _relative_error(values, other, mask)


def builtin_metric(name: str) -> BuiltinMetric:
    """The built-in metric a name gives: ``top1``, ``top5``/``topk``, ``cosine``, ``mse``,
    ``relative_error``, ``perplexity``, each optionally with the output it reads
    (``"cosine(pooler_output)"``). An unknown name is a ``CompressError`` listing them."""
    try:
        spec = builtin_name(name)
    except ValueError as error:
        raise CompressError(str(error)) from None
    if spec is None:
        raise CompressError(f"{name!r} is not a built-in metric; {unknown_hint(name)}")
    return BuiltinMetric(spec)


def topk_accuracy(k: int = 5, *, key: str | None = None) -> BuiltinMetric:
    """Top-k accuracy: the fraction of samples whose class index is among the k highest
    scores (``top1``: k=1, the default metric). Batches are (inputs, targets) pairs."""
    if not isinstance(k, int) or isinstance(k, bool) or k < 1:
        raise CompressError(f"topk_accuracy needs an integer k >= 1, got {k!r}")
    return BuiltinMetric(BuiltinName("top", k, key))


def cosine_similarity(*, key: str | None = None) -> BuiltinMetric:
    """Mean cosine similarity of the compressed model's outputs to the float model's, per
    sample (higher is better, 1 at most): for embedding models. Batches may be bare inputs.
    Token outputs (batch, tokens, features) are mean-pooled over the real tokens first."""
    return BuiltinMetric(BuiltinName("cosine", key=key))


def mean_squared_error(*, key: str | None = None) -> BuiltinMetric:
    """Mean squared difference of the compressed model's outputs from the float model's,
    per element (real tokens only); lower is better. Batches may be bare inputs."""
    return BuiltinMetric(BuiltinName("mse", key=key))


def relative_error(*, key: str | None = None) -> BuiltinMetric:
    """Mean per-sample ``||compressed - float|| / ||float||`` of the outputs (real tokens
    only); lower is better. Batches may be bare inputs."""
    return BuiltinMetric(BuiltinName("relative_error", key=key))


def perplexity(*, key: str | None = None, ignore_index: int = -100) -> BuiltinMetric:
    """Perplexity of a causal LM: exp of the mean cross-entropy of each token given the
    ones before (logits at position t predict label t+1), over every label that is not
    ``ignore_index``; lower is better. The labels are the batch's targets, else its
    inputs' ``labels`` (not passed to the model), else its ``input_ids`` (the bare tensor
    or the dict's) with padding (``attention_mask`` 0) ignored."""
    return BuiltinMetric(BuiltinName("perplexity", key=key), ignore_index)


def pick_output(outputs: Any, key: str | None) -> tuple[torch.Tensor, str | None]:
    """The tensor a metric reads from ``outputs``, and its name (None for a bare tensor)."""
    if key is None and isinstance(outputs, torch.Tensor):
        return outputs, None
    for name in (key,) if key is not None else OUTPUT_KEYS:
        value = _field(outputs, name)
        if isinstance(value, torch.Tensor):
            return value, name
    first = outputs[0] if isinstance(outputs, (tuple, list)) and outputs else None
    if key is None and isinstance(first, torch.Tensor):
        return first, "0"
    wanted = repr(key) if key is not None else "a tensor, or one of " + ", ".join(OUTPUT_KEYS)
    raise ModelError(
        f"the metric reads {wanted} from the model's outputs, but the model returned "
        f'{_describe(outputs)}; name the output with e.g. metric="cosine(pooler_output)"'
    )


def _field(outputs: Any, name: str) -> Any:
    if isinstance(outputs, Mapping):
        return outputs.get(name)
    if isinstance(outputs, (tuple, list)):
        return outputs[int(name)] if name.isdigit() and int(name) < len(outputs) else None
    return getattr(outputs, name, None)


def _describe(outputs: Any) -> str:
    if isinstance(outputs, Mapping):
        return f"a {type(outputs).__name__} with keys {sorted(map(str, outputs))}"
    names = (
        [n for n in vars(outputs) if not n.startswith("_")] if hasattr(outputs, "__dict__") else []
    )
    fields = f" with attributes {names}" if names else ""
    return f"a {type(outputs).__name__}{fields}"


def attention_mask(inputs: Any, values: torch.Tensor) -> torch.Tensor | None:
    """The batch's ``attention_mask`` (inputs a dict holding one) when it fits the
    (batch, tokens) axes of ``values``; None otherwise."""
    mask = inputs.get("attention_mask") if isinstance(inputs, Mapping) else None
    if not isinstance(mask, torch.Tensor) or values.dim() < 3:
        return None
    if tuple(mask.shape) != tuple(values.shape[:2]):
        return None
    return mask.to(values.device)


def _same_shape(values: torch.Tensor, other: Any, what: str) -> torch.Tensor:
    if not isinstance(other, torch.Tensor) or other.shape != values.shape:
        shape = tuple(other.shape) if isinstance(other, torch.Tensor) else type(other).__name__
        raise ModelError(
            f"{what} compares outputs of the same shape; the compressed model gave "
            f"{tuple(values.shape)} and the float model {shape}"
        )
    return other


def _pooled(values: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """One vector per sample: token outputs mean-pooled over the real tokens."""
    values = values.float()
    if values.dim() == 3:
        weight = torch.ones(values.shape[:2], device=values.device) if mask is None else mask
        weight = weight.to(values.dtype).unsqueeze(-1)
        return (values * weight).sum(1) / weight.sum(1).clamp(min=1)
    return values.reshape(len(values), -1) if values.dim() > 1 else values.unsqueeze(-1)


def _cosine(values: torch.Tensor, other: Any, mask: torch.Tensor | None) -> tuple[Any, int]:
    other = _same_shape(values, other, "cosine")
    similarity = F.cosine_similarity(_pooled(values, mask), _pooled(other, mask), dim=-1)
    return similarity.sum(), similarity.numel()


def _token_weight(values: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    if mask is None:
        return torch.ones((), device=values.device)
    return mask.to(torch.float32).reshape(*mask.shape, *([1] * (values.dim() - 2)))


def _squared_error(values: torch.Tensor, other: Any, mask: torch.Tensor | None) -> tuple[Any, Any]:
    other = _same_shape(values, other, "mse")
    weight = _token_weight(values, mask).expand(values.shape)
    squared = (values.float() - other.float()) ** 2 * weight
    return squared.sum(), weight.sum()


def _relative_error(values: torch.Tensor, other: Any, mask: torch.Tensor | None) -> tuple[Any, int]:
    other = _same_shape(values, other, "relative_error")
    weight = _token_weight(values, mask)
    difference = ((values.float() - other.float()) * weight).reshape(len(values), -1)
    reference = (other.float() * weight).reshape(len(values), -1)
    errors = difference.norm(dim=1) / reference.norm(dim=1).clamp(min=1e-12)
    return errors.sum(), errors.numel()


def _topk(values: torch.Tensor, targets: Any, k: int) -> tuple[Any, int]:
    if values.dim() < 2 or values.shape[-1] < k:
        raise ModelError(
            f"top-{k} accuracy needs class scores of shape (batch, classes >= {k}), "
            f"got {tuple(values.shape)}"
        )
    targets = torch.as_tensor(targets, device=values.device)
    if targets.shape != values.shape[:-1] or targets.is_floating_point() or targets.is_complex():
        raise DataError(
            f"top-{k} accuracy needs integer class indices of shape "
            f"{tuple(values.shape[:-1])} as targets, got {targets.dtype} of shape "
            f"{tuple(targets.shape)}"
        )
    if values.is_floating_point() and bool(values.isnan().any()):
        return torch.tensor(float("nan")), targets.numel()
    best = values.topk(k, dim=-1).indices
    return (best == targets.unsqueeze(-1)).any(-1).sum(), targets.numel()


def _labels(targets: Any, inputs: Any) -> torch.Tensor:
    """The labels perplexity scores: targets, else inputs' labels, else input ids."""
    if targets is not None:
        return torch.as_tensor(targets)
    if isinstance(inputs, Mapping):
        if isinstance(inputs.get("labels"), torch.Tensor):
            return inputs["labels"]
        ids, mask = inputs.get("input_ids"), inputs.get("attention_mask")
    else:
        ids, mask = inputs, None
    if not isinstance(ids, torch.Tensor):
        raise DataError(
            "perplexity needs labels: give (inputs, labels) batches, or inputs that are a "
            "tensor of token ids or a dict with input_ids (and labels or attention_mask)"
        )
    if isinstance(mask, torch.Tensor) and mask.shape == ids.shape:
        return ids.masked_fill(mask == 0, -100)
    return ids


def _next_token_loss(
    logits: torch.Tensor, labels: torch.Tensor, ignore_index: int
) -> tuple[Any, Any]:
    labels = labels.to(logits.device)
    if logits.dim() != 3 or labels.shape != logits.shape[:2]:
        raise DataError(
            f"perplexity needs logits of shape (batch, tokens, vocabulary) and labels of "
            f"shape (batch, tokens); got {tuple(logits.shape)} and {tuple(labels.shape)}"
        )
    shifted = labels[:, 1:]
    if ignore_index != -100:
        shifted = shifted.masked_fill(shifted == ignore_index, -100)
    loss = F.cross_entropy(
        logits[:, :-1].reshape(-1, logits.shape[-1]).float(),
        shifted.reshape(-1).long(),
        ignore_index=-100,
        reduction="sum",
    )
    return loss, (shifted != -100).sum()


def split_for(metric: BuiltinMetric, batch: Any) -> tuple[Any, Any]:
    """(inputs to call the model with, targets or None) of one batch for ``metric``.

    Top-k needs (inputs, targets) pairs; the others take bare inputs too. For perplexity
    a dict's ``labels`` are kept from the model (the metric computes the loss itself).
    """
    inputs, targets = split_batch(batch, need_targets=metric.spec.base == "top")
    return inputs, targets


def call_inputs(metric: BuiltinMetric, inputs: Any) -> Any:
    """What the model is called with: for perplexity, a dict's inputs without ``labels``."""
    if metric.spec.base == "perplexity" and isinstance(inputs, Mapping) and "labels" in inputs:
        return {name: value for name, value in inputs.items() if name != "labels"}
    return inputs
