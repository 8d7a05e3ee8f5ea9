"""Trial callbacks for the search and keep_float tests: a fake with a known boundary, and a
real one that compresses with the engine and scores with plain torch.

Neither stands in for the plugin's check: the real one breaks one budget,
``max_accuracy_drop``, by its definition (the model loses more than ``max_drop`` of
top-1 accuracy, counted here with ``argmax``), and the tests check what a search
chooses against accuracies they compute themselves.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from pytest_compress.engine.apply import compress_model
from pytest_compress.engine.specs import PruneSpec, QuantSpec
from pytest_compress.fileformat.container import compressed_size
from pytest_compress.tuning.trial import Trial


def top1(model: nn.Module, data: list) -> float:
    """The fraction of samples whose largest output is the target: plain torch."""
    with torch.no_grad():
        right = sum(int((model(x).argmax(dim=-1) == y).sum()) for x, y in data)
    return right / sum(len(y) for _, y in data)


class AccuracyTrial:
    """Compress with the engine; broken when top-1 falls more than ``max_drop`` below float.

    ``calls`` lists the (quantize, prune) specs tried, in order.
    """

    def __init__(self, model: nn.Module, data: list, max_drop: float) -> None:
        self.model, self.data, self.max_drop = model, data, max_drop
        self.float_accuracy = top1(model, data)
        self.calls: list[tuple[QuantSpec | None, PruneSpec | None]] = []

    def __call__(self, quantize: QuantSpec | None, prune: PruneSpec | None) -> Trial:
        self.calls.append((quantize, prune))
        compressed = compress_model(self.model, quantize=quantize, prune=prune)
        accuracy = top1(compressed, self.data)
        broken = ("max_accuracy_drop",) if self.float_accuracy - accuracy > self.max_drop else ()
        return Trial(metric=accuracy, size=compressed_size(compressed), broken=broken)


def setting_of(kind: str, quantize: QuantSpec | None, prune: PruneSpec | None) -> float:
    if kind == "bits":
        assert quantize is not None
        return quantize.bits
    assert prune is not None
    value = prune.amount if kind == "sparsity" else prune.threshold
    assert value is not None
    return value


def fake_trial(
    kind: str,
    *,
    damage_above: float | None,
    floor_below: float | None = None,
    calls: list | None = None,
) -> Callable[[QuantSpec | None, PruneSpec | None], Trial]:
    """A trial whose verdict is known: the metric budget breaks beyond ``damage_above``.

    "Beyond" means more compression: a larger sparsity or alpha, fewer bits.
    ``damage_above=None`` breaks it everywhere. ``floor_below`` breaks the size budget
    for less compression than that.
    """

    def more(value: float, than: float) -> bool:
        return value < than if kind == "bits" else value > than

    def trial(quantize: QuantSpec | None, prune: PruneSpec | None) -> Trial:
        value = setting_of(kind, quantize, prune)
        if calls is not None:
            calls.append((quantize, prune))
        broken = []
        if damage_above is None or more(value, damage_above):
            broken.append("max_accuracy_drop")
        if floor_below is not None and more(floor_below, value):
            broken.append("max_size_ratio")
        metric = 1.0 - value / 100 if kind == "bits" else 1.0 - value
        return Trial(
            metric=metric,
            size=int(1000 * (value / 8 if kind == "bits" else 1 - value)) + 10,
            broken=tuple(broken),
            violations=tuple(f"{name} broken" for name in broken),
        )

    return trial
