"""Rounding methods x bit widths x scale granularity: output error and accuracy.

    python benchmarks/bench_formats.py

A printed table, not a timed test. Three models on the real scikit-learn digits (the
example project's data and nets): the trained LeNet and MLP checkpoints, and a small
transformer classifier (``RowTransformer``: the example's encoder blocks over the 8 pixel
rows, 128 wide) trained here for a few seconds. Each is quantized with rtn, mse and gptq at int4 and
int3, per channel, g128 and g32 (layers with fewer inputs than a group are one group
per channel: ``allow_short_rows``). GPTQ calibrates on 256 training samples; the error
and accuracy are measured on the test split. The error is the relative output error
``||f_q(x) - f(x)|| / ||f(x)||`` over the test inputs' logits.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch
from torch import nn

from pytest_compress import QuantSpec, compress_model
from pytest_compress.tables import text_table

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "example_project"))
import digits  # noqa: E402
import nets  # noqa: E402
from train import train  # noqa: E402

METHODS = ("rtn", "mse", "gptq")
BITS = (4, 3)
GROUPS = (None, 128, 32)
CALIBRATION_SAMPLES = 256


class RowTransformer(nn.Module):
    """A small transformer classifier of the digits: each of the 8 pixel rows is a token
    (a linear embedding of its 8 grey levels plus a learned position), two pre-norm blocks
    of the example's ``DigitEncoder`` (every projection a Linear layer), a mean over the
    tokens and a linear head. 128 wide, so its layers have 128 and 256 inputs."""

    def __init__(self, width: int = 128, heads: int = 4, depth: int = 2) -> None:
        super().__init__()
        self.heads = heads
        self.embed = nn.Linear(8, width)
        self.position = nn.Parameter(torch.randn(8, width) * 0.1)
        self.blocks = nn.ModuleList(nets._Block(width) for _ in range(depth))
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, 10)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        x = self.embed(pixels.reshape(-1, 8, 8)) + self.position
        for block in self.blocks:
            x = block(x, self.heads)
        return self.head(self.norm(x).mean(dim=1))


def models() -> dict[str, tuple[nn.Module, digits.Split]]:
    images, vectors = digits.split("images"), digits.split("vectors")
    torch.manual_seed(digits.SEED)
    transformer = RowTransformer()
    started = time.perf_counter()
    accuracy = train(transformer, vectors, epochs=8, lr=1e-3)
    print(f"trained the transformer in {time.perf_counter() - started:.1f} s: {accuracy:.2%}")
    return {
        "LeNet": (nets.load(nets.Net(), nets.LENET_CHECKPOINT), images),
        "MLP": (nets.load(nets.mlp(), nets.MLP_CHECKPOINT), vectors),
        "transformer": (transformer.eval(), vectors),
    }


def evaluate(model: nn.Module, reference: torch.Tensor, split: digits.Split):
    inputs, targets = split.test.tensors
    with torch.no_grad():
        outputs = model(inputs)
    error = float((outputs - reference).norm() / reference.norm())
    return error, float((outputs.argmax(-1) == targets).float().mean())


def measure(name: str, model: nn.Module, split: digits.Split) -> list[list[str]]:
    calibration = [split.train.tensors[0][:CALIBRATION_SAMPLES]]
    inputs, targets = split.test.tensors
    with torch.no_grad():
        reference = model(inputs)
    float_accuracy = float((reference.argmax(-1) == targets).float().mean())
    rows, errors = [], {}
    for bits in BITS:
        for group in GROUPS:
            for method in METHODS:
                spec = QuantSpec(bits=bits, group_size=group, method=method, allow_short_rows=True)
                started = time.perf_counter()
                compressed = compress_model(model, quantize=spec, calibration_data=calibration)
                seconds = time.perf_counter() - started
                error, accuracy = evaluate(compressed, reference, split)
                errors[bits, group, method] = (error, accuracy)
                rows.append(
                    [
                        name,
                        spec.describe(),
                        f"{error:.4f}",
                        f"{accuracy:.2%}",
                        f"{accuracy - float_accuracy:+.2%}",
                        f"{seconds:.2f}",
                    ]
                )
    return rows, errors


def main() -> None:
    torch.set_num_threads(1)
    header = ["model", "recipe", "rel. output error", "accuracy", "vs float", "seconds"]
    summary = []
    for name, (model, split) in models().items():
        rows, errors = measure(name, model, split)
        print()
        print("\n".join(text_table(header, rows)))
        for group in GROUPS:
            rtn, gptq = errors[3, group, "rtn"], errors[3, group, "gptq"]
            how = "per-channel" if group is None else f"g{group}"
            verdict = "beats" if gptq[0] < rtn[0] else "DOES NOT beat"
            summary.append(
                f"{name:12s} int3 {how:12s} gptq {verdict} rtn: error {rtn[0]:.4f} -> "
                f"{gptq[0]:.4f} ({1 - gptq[0] / rtn[0]:.0%} lower), accuracy "
                f"{rtn[1]:.2%} -> {gptq[1]:.2%} ({gptq[1] - rtn[1]:+.2%})"
            )
    print()
    print("\n".join(summary))


if __name__ == "__main__":
    main()
