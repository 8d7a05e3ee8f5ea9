"""Train the example's LeNet and MLP on the digits' training split; write the checkpoints.

Deterministic on CPU (fixed seeds, one thread) and well under a minute:

    python example_project/train.py
"""

from __future__ import annotations

import digits
import nets
import torch
from torch import nn
from torch.utils.data import DataLoader


def train(model: nn.Module, split: digits.Split, *, epochs: int, lr: float) -> float:
    """Adam on the training split; returns the test accuracy."""
    generator = torch.Generator().manual_seed(digits.SEED)
    batches = DataLoader(split.train, batch_size=32, shuffle=True, generator=generator)
    optimiser = torch.optim.Adam(model.parameters(), lr=lr)
    loss_fn = nn.CrossEntropyLoss()
    model.train()
    for _ in range(epochs):
        for inputs, targets in batches:
            optimiser.zero_grad()
            loss_fn(model(inputs), targets).backward()
            optimiser.step()
    model.eval()
    inputs, targets = split.test.tensors
    with torch.no_grad():
        return float((model(inputs).argmax(-1) == targets).float().mean())


def main() -> None:
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    torch.manual_seed(digits.SEED)
    lenet = nets.Net()
    accuracy = train(lenet, digits.split("images"), epochs=15, lr=2e-3)
    torch.save(lenet.state_dict(), nets.LENET_CHECKPOINT)
    print(f"LeNet: test accuracy {accuracy:.2%} -> {nets.LENET_CHECKPOINT.name}")

    torch.manual_seed(digits.SEED)
    mlp = nets.mlp()
    accuracy = train(mlp, digits.split("vectors"), epochs=30, lr=1e-3)
    torch.save(mlp.state_dict(), nets.MLP_CHECKPOINT)
    print(f"MLP: test accuracy {accuracy:.2%} -> {nets.MLP_CHECKPOINT.name}")


if __name__ == "__main__":
    main()
