"""How a batch of data reaches a model: ``(inputs, targets)`` pairs, or bare inputs."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import nn

from ..errors import DataError


def split_batch(batch: Any, *, need_targets: bool) -> tuple[Any, Any]:
    """(inputs, targets) of a batch; a bare tensor or mapping is inputs only."""
    if isinstance(batch, (tuple, list)) and len(batch) == 2:
        return batch[0], batch[1]
    if not need_targets and isinstance(batch, (torch.Tensor, Mapping)):
        return batch, None
    kind = type(batch).__name__
    raise DataError(
        f"each batch must be an (inputs, targets) pair{'' if need_targets else ' or inputs'}, "
        f"got a {kind}{f' of length {len(batch)}' if isinstance(batch, (tuple, list)) else ''}"
    )


def to_device(value: Any, device: torch.device | str) -> Any:
    """``value`` moved to ``device``: tensors, and tensors inside tuples, lists and dicts.

    NumPy arrays become tensors on the way (``from_numpy``), float64 as float32: NumPy's
    default float is float64 and a model's weights are float32.
    """
    if is_numpy(value):
        value = torch.as_tensor(value)
        if value.dtype == torch.float64:
            value = value.to(torch.get_default_dtype())
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, Mapping):
        return {k: to_device(v, device) for k, v in value.items()}
    if isinstance(value, (tuple, list)):
        return type(value)(to_device(v, device) for v in value)
    return value


def padding_mask(inputs: Any) -> torch.Tensor | None:
    """The (batch, tokens) ``attention_mask`` of a dict batch (a tokenizer's output) as
    booleans, True on real tokens; None when the batch carries none."""
    mask = inputs.get("attention_mask") if isinstance(inputs, Mapping) else None
    if not isinstance(mask, torch.Tensor) or mask.dim() != 2:
        return None
    return mask != 0


def is_numpy(value: Any) -> bool:
    """A NumPy array or scalar, told by its type's module: the engine does not import NumPy."""
    return type(value).__module__ == "numpy" and hasattr(value, "__array__")


def describe_inputs(inputs: Any) -> str:
    """A batch's inputs in words: ``a float32 tensor of shape (64, 8)``, or their types."""
    if isinstance(inputs, torch.Tensor):
        return f"a {str(inputs.dtype).removeprefix('torch.')} tensor of shape {tuple(inputs.shape)}"
    if isinstance(inputs, Mapping):
        return "{" + ", ".join(f"{k!r}: {describe_inputs(v)}" for k, v in inputs.items()) + "}"
    if isinstance(inputs, (tuple, list)):
        return "(" + ", ".join(describe_inputs(v) for v in inputs) + ")"
    return f"a {type(inputs).__name__}"


def call_model(model: nn.Module, inputs: Any) -> Any:
    """Run ``model`` on inputs: a tensor, a tuple/list of positional inputs, or a dict of kwargs."""
    if isinstance(inputs, Mapping):
        return _call(model, "model(**inputs), the batch's dict as keyword arguments", **inputs)
    if isinstance(inputs, (tuple, list)):
        return _call(model, "model(*inputs), the batch's sequence as positional arguments", *inputs)
    return model(inputs)


def _call(model: nn.Module, how: str, *args: Any, **kwargs: Any) -> Any:
    try:
        return model(*args, **kwargs)
    except TypeError as error:
        # The usual cause is the convention, not the model: say which call was made.
        if "argument" not in str(error):
            raise
        raise TypeError(
            f"{error} (pytest-compress called {how}; give each batch as (inputs, targets) "
            "with inputs a tensor, a tuple of positional inputs or a dict of keyword inputs)"
        ) from error


def model_device(model: nn.Module) -> torch.device:
    """Where the model's first parameter (or buffer) lives; CPU for a stateless model."""
    for tensor in (*model.parameters(), *model.buffers()):
        return tensor.device
    return torch.device("cpu")


def observe(
    model: nn.Module, watchers: Mapping[nn.Module, Any], data: Iterable[Any], needs: str
) -> None:
    """Run ``model`` over the calibration batches ``data`` (eval mode, no autograd) with each
    watcher a forward hook of its module, its ``mask`` set to each batch's padding mask
    (padded positions stay out of what it gathers). ``DataError`` naming ``needs`` (what
    the data is for) when ``data`` yields no batch; the hooks always come off."""
    from .state import eval_mode  # state imports nothing of ours: no cycle, kept local

    handles = [module.register_forward_hook(watcher) for module, watcher in watchers.items()]
    device, batches = model_device(model), 0
    try:
        with eval_mode(model), torch.inference_mode():
            for batch in data:
                inputs, _ = split_batch(batch, need_targets=False)
                mask = padding_mask(inputs)
                for watcher in watchers.values():
                    watcher.mask = mask
                call_model(model, to_device(inputs, device))
                batches += 1
    finally:
        for handle in handles:
            handle.remove()
    if batches == 0:
        raise DataError(f"calibration_data yielded no batches; {needs} need data")
