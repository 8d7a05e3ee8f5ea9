"""Small models the tests share: the LeNet-5-style CNN of the classic PyTorch CIFAR-10
tutorial, an MLP, odd shapes, and models with a known weak spot (a cliff in sparsity, a
layer fragile under quantization)."""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn


class Net(nn.Module):
    """The LeNet-5-style CNN of the classic PyTorch CIFAR-10 tutorial for 3x32x32 images."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 5)
        self.pool = nn.MaxPool2d(2, 2)
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.fc1 = nn.Linear(16 * 5 * 5, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(F.relu(self.conv1(x)))
        x = self.pool(F.relu(self.conv2(x)))
        x = torch.flatten(x, 1)
        x = F.relu(self.fc1(x))
        x = F.relu(self.fc2(x))
        return self.fc3(x)


def mlp(inputs: int = 16, hidden: int = 32, classes: int = 4) -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(inputs, hidden), nn.ReLU(), nn.BatchNorm1d(hidden), nn.Linear(hidden, classes)
    )


class TiedEmbeddingModel(nn.Module):
    """A language-model shape: the output layer shares the embedding's weight."""

    def __init__(self, vocab: int = 50, dim: int = 12) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.hidden = nn.Linear(dim, dim)
        self.out = nn.Linear(dim, vocab, bias=False)
        self.out.weight = self.embed.weight

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.out(torch.tanh(self.hidden(self.embed(tokens))))


class ConvTransposeModel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.down = nn.Conv1d(2, 8, 3)
        self.up = nn.ConvTranspose1d(8, 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(torch.relu(self.down(x)))


def seeded(model: nn.Module, seed: int = 0) -> nn.Module:
    """``model`` with weights drawn from a fixed seed, in eval mode."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            param.copy_(torch.randn(param.shape, generator=generator) * 0.3)
    return model.eval()


def classification_batches(
    model: nn.Module, inputs: torch.Tensor, batch_size: int = 32
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(inputs, targets) batches labelled by the model itself, so its accuracy is 100%."""
    with torch.no_grad():
        targets = model(inputs).argmax(dim=-1)
    return [
        (inputs[i : i + batch_size], targets[i : i + batch_size])
        for i in range(0, len(inputs), batch_size)
    ]


def small_model() -> nn.Sequential:
    return seeded(
        nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 4))
    )


def labelled_data(model: nn.Module, n: int = 512, inputs: int = 16, seed: int = 3) -> list:
    x = torch.randn(n, inputs, generator=torch.Generator().manual_seed(seed))
    return classification_batches(model, x, batch_size=128)


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


def costly_sensitive_model() -> tuple[nn.Module, torch.Tensor]:
    """An MLP whose big layer ``big`` (8,448 weights) hurts int4 slightly more alone than its
    small layer ``small`` (1,028) does, and bare inputs for a metric relative to the float
    outputs.

    Each row of ``big`` holds a larger weight (2.0) on an input that is always zero: it
    widens the row's int4 range. Measured with the relative squared output error: int4
    everywhere 0.045, ``big`` alone 0.025, ``small`` alone 0.019. Under a 0.03 budget
    keeping either layer float passes; ``small`` costs about 8 times fewer bytes, so it
    recovers far more per byte.
    """
    model = seeded(
        nn.Sequential(OrderedDict(big=nn.Linear(32, 256), act=nn.ReLU(), small=nn.Linear(256, 4)))
    )
    with torch.no_grad():
        model.big.weight[:, 0] = 2.0
    inputs = torch.randn(512, 32, generator=torch.Generator().manual_seed(3))
    inputs[:, 0] = 0.0
    return model.eval(), inputs
