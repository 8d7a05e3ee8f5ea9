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
