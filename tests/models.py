"""Small models the tests share: the LeNet-5-style CNN of the classic PyTorch CIFAR-10
tutorial, an MLP, and odd shapes."""

from __future__ import annotations

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
