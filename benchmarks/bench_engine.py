"""How long the engine takes to compress a large model (run on demand, not a test).

    python benchmarks/bench_engine.py

Builds an MLP with about 25 M parameters and times ``compress_model`` with 4-bit
per-channel quantization plus 80 % global magnitude pruning (the median of 3 runs),
beside the time of one plain ``copy.deepcopy`` of the model, which every recipe pays
so that the user's model is never modified.
"""

from __future__ import annotations

import copy
import statistics
import time

import torch
from torch import nn

from pytest_compress import compress_model, compressed_size, model_size
from pytest_compress.engine.specs import PruneSpec


def big_model() -> nn.Module:
    torch.manual_seed(0)
    widths = [4000, 4000, 2000, 500, 1000]
    layers = []
    for fan_in, fan_out in zip(widths, widths[1:], strict=False):
        layers += [nn.Linear(fan_in, fan_out), nn.ReLU()]
    return nn.Sequential(*layers[:-1]).eval()


def median_seconds(action, repeats: int = 3) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        action()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    model = big_model()
    parameters = sum(p.numel() for p in model.parameters())
    recipe = {"quantize": "int4", "prune": PruneSpec(amount=0.8, scope="global")}
    copy_time = median_seconds(lambda: copy.deepcopy(model))
    compress_time = median_seconds(lambda: compress_model(model, **recipe))
    compressed = compress_model(model, **recipe)
    print(
        f"model: {parameters / 1e6:.1f} M parameters, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads"
    )
    print(f"deepcopy of the model:                  {copy_time:6.3f} s")
    print(
        f"int4 per-channel + prune 80% (global):  {compress_time:6.3f} s "
        f"({compress_time / copy_time:.1f}x the copy)"
    )
    float_bytes, packed_bytes = model_size(model), compressed_size(compressed)
    print(
        f"size: {float_bytes / 1e6:.1f} MB -> {packed_bytes / 1e6:.2f} MB "
        f"(ratio {packed_bytes / float_bytes:.3f})"
    )


if __name__ == "__main__":
    main()
