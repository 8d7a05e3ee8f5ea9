"""The example's two models: the LeNet-5-style CNN of the classic PyTorch CIFAR-10 tutorial,
and a small MLP."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

HERE = Path(__file__).parent
LENET_CHECKPOINT = HERE / "lenet_digits.pt"
MLP_CHECKPOINT = HERE / "mlp_digits.pt"


class Net(nn.Module):
    """The LeNet-5-style CNN of the classic PyTorch CIFAR-10 tutorial, unchanged.

    3x32x32 images in, 10 class scores out.
    """

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


def mlp() -> nn.Sequential:
    """A two-hidden-layer MLP on the flat 8x8 digits."""
    return nn.Sequential(
        nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 64), nn.ReLU(), nn.Linear(64, 10)
    )


def load(model: nn.Module, checkpoint: Path) -> nn.Module:
    """``model`` with the trained weights of ``checkpoint``, in eval mode."""
    model.load_state_dict(torch.load(checkpoint, weights_only=True))
    return model.eval()


class DigitEncoder(nn.Module):
    """A tiny transformer encoder of the digits, built in milliseconds from a seed.

    Each of the 64 pixels (grey level 0..16) is a token; two pre-norm attention blocks
    (written out as Linear layers, so every projection is compressible) and a mean over
    the tokens give a 32-d embedding. Its weights are random: the checks gate how
    faithfully a compressed copy reproduces the float embeddings (metric="cosine").
    """

    def __init__(self, width: int = 32, heads: int = 4, depth: int = 2) -> None:
        super().__init__()
        self.heads = heads
        self.embed = nn.Embedding(17, width)
        self.position = nn.Parameter(torch.randn(64, width) * 0.02)
        self.blocks = nn.ModuleList(_Block(width) for _ in range(depth))
        self.norm = nn.LayerNorm(width)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.embed(tokens) + self.position
        for block in self.blocks:
            x = block(x, self.heads)
        return self.norm(x).mean(dim=1)


class _Block(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.query, self.key, self.value = (nn.Linear(width, width) for _ in range(3))
        self.out = nn.Linear(width, width)
        self.up, self.down = nn.Linear(width, 2 * width), nn.Linear(2 * width, width)

    def forward(self, x: torch.Tensor, heads: int) -> torch.Tensor:
        h = self.norm1(x)
        batch, tokens, width = h.shape

        def split(t: torch.Tensor) -> torch.Tensor:
            return t.view(batch, tokens, heads, width // heads).transpose(1, 2)

        q, k, v = split(self.query(h)), split(self.key(h)), split(self.value(h))
        attended = torch.softmax(q @ k.transpose(-1, -2) / (width // heads) ** 0.5, dim=-1) @ v
        x = x + self.out(attended.transpose(1, 2).reshape(batch, tokens, width))
        return x + self.down(torch.relu(self.up(self.norm2(x))))


def digit_encoder(seed: int = 0) -> DigitEncoder:
    """The encoder with its seeded random weights, in eval mode."""
    torch.manual_seed(seed)
    return DigitEncoder().eval()
