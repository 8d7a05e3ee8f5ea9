"""Shared models for the runtime tests: a seeded MLP 64-256-256-10 and its batches."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from tests.models import seeded


def mlp() -> nn.Module:
    return seeded(
        nn.Sequential(
            nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 10)
        )
    )


@pytest.fixture
def model() -> nn.Module:
    return mlp()


@pytest.fixture(scope="module")
def batch() -> torch.Tensor:
    return torch.randn(256, 64, generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="module")
def calibration() -> list[tuple[torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(2)
    return [
        (torch.randn(32, 64, generator=generator), torch.randint(0, 10, (32,), generator=generator))
        for _ in range(4)
    ]


def state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {name: value.clone() for name, value in model.state_dict().items()}


def same_state(model: nn.Module, before: dict[str, torch.Tensor]) -> bool:
    after = model.state_dict()
    return after.keys() == before.keys() and all(
        type(after[name]) is torch.Tensor and torch.equal(after[name], before[name])
        for name in before
    )
