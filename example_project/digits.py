"""The real handwritten digits that ship with scikit-learn, split once and for all.

1,797 8x8 images of the digits 0-9 (no download). ``split`` shuffles them with a fixed
seed into train (60 %), validation (20 %) and test (20 %). The LeNet sees each image
resized to 32x32 with 3 channels, as the CIFAR-10 tutorial's ``Net`` expects; the
MLP sees the flat 64 pixels.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from torch.utils.data import DataLoader, TensorDataset

SEED = 2024


@dataclass(frozen=True)
class Split:
    train: TensorDataset
    validation: TensorDataset
    test: TensorDataset


def _as_images(pixels: torch.Tensor) -> torch.Tensor:
    """8x8 grey digits (0..16) as normalised 3x32x32 images."""
    images = pixels.reshape(-1, 1, 8, 8) / 16.0
    images = F.interpolate(images, size=(32, 32), mode="bilinear", align_corners=False)
    return ((images - 0.5) / 0.5).expand(-1, 3, -1, -1).contiguous()


def _as_vectors(pixels: torch.Tensor) -> torch.Tensor:
    """8x8 grey digits (0..16) as flat, normalised 64-vectors."""
    return (pixels / 16.0 - 0.5) / 0.5


def split(kind: str = "images") -> Split:
    """The seeded train/validation/test split, as ``"images"`` (LeNet), ``"vectors"`` (MLP)
    or ``"tokens"`` (the encoder: 64 grey levels as token ids)."""
    digits = load_digits()
    pixels = torch.tensor(digits.data, dtype=torch.float32)
    labels = torch.tensor(digits.target, dtype=torch.long)
    if kind == "tokens":  # the 64 grey levels (0..16) as token ids, for the encoder
        inputs = pixels.long()
    else:
        inputs = _as_images(pixels) if kind == "images" else _as_vectors(pixels)
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(SEED))
    n_train = int(0.6 * len(order))
    n_validation = int(0.2 * len(order))
    parts = (
        order[:n_train],
        order[n_train : n_train + n_validation],
        order[n_train + n_validation :],
    )
    return Split(*(TensorDataset(inputs[index], labels[index]) for index in parts))


def loader(dataset: TensorDataset, batch_size: int = 128) -> DataLoader:
    """Evaluation batches in a fixed order."""
    return DataLoader(dataset, batch_size=batch_size, shuffle=False)


def token_batches(dataset: TensorDataset, batch_size: int = 128) -> list[torch.Tensor]:
    """Bare input batches of token ids, without labels: a metric against the float model's
    own outputs (cosine) needs no targets."""
    tokens = dataset.tensors[0]
    return [tokens[i : i + batch_size] for i in range(0, len(tokens), batch_size)]
