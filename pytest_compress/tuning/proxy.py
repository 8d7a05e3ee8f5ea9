"""A cheap proxy of each layer's sensitivity: the error of its own output, compressed.

Measuring a layer's real metric drop costs a full evaluation of the model. The proxy
costs a forward pass of the float model over a few batches, whatever the number of
layers: a hook on every layer the recipe touches feeds the layer's float input to its
compressed twin (the same layer in a copy compressed with the whole recipe) and sums

    ||twin(x) - layer(x)||^2 / ||layer(x)||^2

over the batches. The twin sees the float model's input, so each error is that layer's
alone, as the real sensitivity measures it; the twin carries exactly what the full recipe
does to the layer (a global pruning mask included).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from itertools import islice
from typing import Any

import torch
from torch import nn

from ..engine.batches import call_model, model_device, split_batch, to_device
from ..engine.layers import Layer
from ..engine.state import eval_mode

PROXY_BATCHES = 2


def output_errors(
    model: nn.Module,
    compressed: nn.Module,
    layers: Sequence[Layer],
    batches: Iterable[Any],
    *,
    max_batches: int = PROXY_BATCHES,
) -> dict[str, float]:
    """Each layer's relative squared output error when compressed, on ``max_batches`` batches.

    ``compressed`` is a compressed copy of ``model`` (same module names). Batches may be
    ``(inputs, targets)`` pairs or bare inputs. ``model`` is run, never modified: its hooks
    are removed however the pass ends.
    """
    error = dict.fromkeys((layer.name for layer in layers), 0.0)
    energy = dict.fromkeys(error, 0.0)

    def hook_for(name: str) -> Any:
        twin = compressed.get_submodule(name)

        def hook(module: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
            if not isinstance(output, torch.Tensor):
                return
            approximate = twin(*args, **kwargs)
            error[name] += float((approximate.float() - output.float()).pow(2).sum())
            energy[name] += float(output.float().pow(2).sum())

        return hook

    handles = [
        layer.module.register_forward_hook(hook_for(layer.name), with_kwargs=True)
        for layer in layers
    ]
    device = model_device(model)
    try:
        with eval_mode(model), eval_mode(compressed), torch.no_grad():
            for batch in islice(batches, max_batches):
                inputs, _ = split_batch(batch, need_targets=False)
                call_model(model, to_device(inputs, device))
    finally:
        for handle in handles:
            handle.remove()
    return {name: error[name] / energy[name] if energy[name] > 0 else 0.0 for name in error}
