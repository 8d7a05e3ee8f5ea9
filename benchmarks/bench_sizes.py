"""Honest sizes: bytes of the file ``save_compressed`` writes, over ``torch.save`` bytes.

    python benchmarks/bench_sizes.py

Random-weight models (the ratio depends on shapes, not on training): the seed's LeNet,
torchvision's resnet18 and mobilenet_v3_small, at 8, 4 and 2 bits, with and without
90 % global magnitude pruning, and pruned but not quantized.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from torchvision.models import mobilenet_v3_small, resnet18

from pytest_compress import PruneSpec, compress_model, compressed_size, model_size

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "example_project"))
from nets import Net  # noqa: E402  (the example's copy of the seed's LeNet)

RECIPES = {
    "int8": {"quantize": "int8"},
    "int4": {"quantize": "int4"},
    "int2": {"quantize": "int2"},
    "prune 90% + int8": {"quantize": "int8", "prune": PruneSpec(amount=0.9, scope="global")},
    "prune 90% + int4": {"quantize": "int4", "prune": PruneSpec(amount=0.9, scope="global")},
    "prune 90% (float)": {"prune": PruneSpec(amount=0.9, scope="global")},
}


def main() -> None:
    torch.manual_seed(0)
    models = {"LeNet": Net(), "resnet18": resnet18(), "mobilenet_v3_small": mobilenet_v3_small()}
    print(f"{'model':20s} {'float bytes':>12s}  " + "  ".join(f"{r:>17s}" for r in RECIPES))
    for name, model in models.items():
        float_bytes = model_size(model.eval())
        ratios = [
            compressed_size(compress_model(model, **recipe)) / float_bytes
            for recipe in RECIPES.values()
        ]
        print(f"{name:20s} {float_bytes:12d}  " + "  ".join(f"{r:17.4f}" for r in ratios))


if __name__ == "__main__":
    main()
