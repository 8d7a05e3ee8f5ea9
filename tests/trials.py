"""Trial callbacks for the search and mixed-precision tests: real engine ones and fakes."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from pytest_compress.budgets import Budgets, check_budgets
from pytest_compress.engine.apply import compress_model
from pytest_compress.engine.measure import evaluate, model_size, sparsity
from pytest_compress.engine.specs import PruneSpec, QuantSpec
from pytest_compress.fileformat.container import compressed_size
from pytest_compress.tuning.trial import Trial, describe_violation
from tests.models import classification_batches, seeded


def small_model() -> nn.Sequential:
    return seeded(
        nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 4))
    )


def labelled_data(model: nn.Module, n: int = 512, inputs: int = 16, seed: int = 3) -> list:
    x = torch.randn(n, inputs, generator=torch.Generator().manual_seed(seed))
    return classification_batches(model, x, batch_size=128)


class EngineTrial:
    """Compress with the engine, evaluate, and hold the result against ``budgets``.

    What the plugin's check runner does for each trial, without pytest. ``calls`` lists
    the (quantize, prune) specs tried, in order.
    """

    def __init__(self, model: nn.Module, data: list, budgets: Budgets) -> None:
        self.model, self.data, self.budgets = model, data, budgets
        self.float_metric = evaluate(model, data)
        self.float_size = model_size(model)
        self.calls: list[tuple[QuantSpec | None, PruneSpec | None]] = []

    def __call__(self, quantize: QuantSpec | None, prune: PruneSpec | None) -> Trial:
        self.calls.append((quantize, prune))
        compressed = compress_model(self.model, quantize=quantize, prune=prune)
        metric = evaluate(compressed, self.data)
        size = compressed_size(compressed)
        drop = self.float_metric - metric
        checks = check_budgets(
            self.budgets,
            accuracy_drop=drop,
            relative_drop=drop / self.float_metric,
            size_ratio=size / self.float_size,
            compressed_size=size,
            sparsity=sparsity(compressed).overall,
        )
        broken = [check for check in checks if not check.ok]
        return Trial(
            metric=metric,
            size=size,
            broken=tuple(check.budget for check in broken),
            violations=tuple(describe_violation(check) for check in broken),
            result=compressed,
        )


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


# A single Linear(50 -> 2) whose accuracy falls off a known cliff. Row 0, columns 0..16
# hold 17 "vital" weights 1.00, 1.01, ..., 1.16; every other weight is a zero or a tiny
# decoy (<= 0.066) on an input that is always zero. The data are +e_j (class 0) and
# -e_j (class 1) for each vital column j: pruning w[0, j] ties the logits at 0, argmax
# picks class 0, and one sample of 34 is lost (2.9 pp).
CLIFF_VITAL = 17
CLIFF_SPARSITY = 0.83  # 83 of the 100 weights can go: the zeros and decoys
CLIFF_ALPHA = 1.0 / 1.16  # |w| < alpha * max|w| first hits the smallest vital weight above this


def cliff_model() -> tuple[nn.Module, list]:
    model = nn.Linear(50, 2, bias=False)
    weight = torch.zeros(2, 50)
    weight[0, :CLIFF_VITAL] = 1.0 + 0.01 * torch.arange(CLIFF_VITAL, dtype=torch.float32)
    decoys = 0.001 * torch.arange(1, 67, dtype=torch.float32)
    weight[:, CLIFF_VITAL:] = decoys.view(2, 33)
    with torch.no_grad():
        model.weight.copy_(weight)
    eye = torch.eye(50)[:CLIFF_VITAL]
    inputs = torch.cat([eye, -eye])
    targets = torch.cat([torch.zeros(CLIFF_VITAL), torch.ones(CLIFF_VITAL)]).long()
    return model.eval(), [(inputs, targets)]


def fragile_model() -> tuple[nn.Module, list]:
    """An MLP whose first layer ``fc1`` (not the largest) is fragile under quantization.

    Every row of ``fc1`` holds one huge weight (50.0) on an input that is always zero:
    harmless in float, but it stretches each row's quantization range so far that the
    other weights round to almost nothing. ``fc2`` and ``fc3`` are ordinary.
    """
    from collections import OrderedDict

    model = seeded(
        nn.Sequential(
            OrderedDict(
                fc1=nn.Linear(16, 32),
                act1=nn.ReLU(),
                fc2=nn.Linear(32, 64),
                act2=nn.ReLU(),
                fc3=nn.Linear(64, 4),
            )
        )
    )
    with torch.no_grad():
        model.fc1.weight[:, 0] = 50.0
    inputs = torch.randn(512, 16, generator=torch.Generator().manual_seed(3))
    inputs[:, 0] = 0.0
    return model, classification_batches(model, inputs, batch_size=128)
