"""Engine seconds per 100 M parameters, as ratios to their floors in the same run (on demand).

    python benchmarks/bench_engine_speed.py [--millions 50] [--rounds 3]
    PYTHONPATH=/path/to/old/checkout python benchmarks/bench_engine_speed.py   # before

Each operation (A) and its floor (B) run interleaved, round by round, and the table shows
medians, so a machine whose load changes mid-run shifts both alike and cannot invert a
ratio. Floors: ``torch.fake_quantize_per_channel_affine`` over every weight (the kernel
any quantizer pays), ``copy.deepcopy`` (every recipe copies the user's model),
``torch.save`` / ``torch.load`` of the float ``state_dict``. The load average is printed
before and after. Nothing here is a test.
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import tempfile
import time
from collections.abc import Callable

import torch
from torch import nn

from pytest_compress import compress_model, compressed_size, load_compressed, save_compressed
from pytest_compress.engine.specs import PruneSpec

WIDTH = 2048


def build(millions: float) -> nn.Module:
    layers = []
    for _ in range(max(1, round(millions * 1e6 / (WIDTH * WIDTH)))):
        layer = nn.Linear(WIDTH, WIDTH, device="meta")
        layer.to_empty(device="cpu")
        with torch.no_grad():
            layer.weight.normal_(0, WIDTH**-0.5)
            layer.bias.zero_()
        layers += [layer, nn.ReLU()]
    return nn.Sequential(*layers[:-1]).eval()


def fake_quantize_floor(model: nn.Module) -> None:
    """The per-channel int4 fake-quantization kernel over every weight, given its ranges."""
    for module in model.modules():
        if isinstance(module, nn.Linear):
            w = module.weight.detach()
            lo, hi = w.amin(1).clamp(max=0), w.amax(1).clamp(min=0)
            scale = ((hi - lo) / 15).clamp(min=1e-8)
            zero = (-lo / scale).round().to(torch.int32)
            torch.fake_quantize_per_channel_affine(w, scale, zero, 0, 0, 15)


def timed(action: Callable[[], object]) -> float:
    start = time.perf_counter()
    action()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--millions", type=float, default=50)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = build(args.millions)
    params = sum(p.numel() for p in model.parameters())
    per100 = 1e8 / params
    pruned = PruneSpec(amount=0.8, scope="global")
    packed = compress_model(model, quantize="int4", prune=pruned)
    tmp = tempfile.mkdtemp(dir=os.environ.get("TMPDIR"))
    ours, theirs = os.path.join(tmp, "m.ptcz"), os.path.join(tmp, "m.pt")
    save_compressed(packed, ours)
    torch.save(model.state_dict(), theirs)
    pairs: dict[str, tuple[Callable[[], object], str, Callable[[], object]]] = {
        "int4 + global 80 % prune": (
            lambda: compress_model(model, quantize="int4", prune=pruned),
            "fake-quant",
            lambda: fake_quantize_floor(model),
        ),
        "int8 quantization": (
            lambda: compress_model(model, quantize="int8"),
            "fake-quant",
            lambda: fake_quantize_floor(model),
        ),
        "global 80 % prune": (
            lambda: compress_model(model, prune=pruned),
            "deepcopy",
            lambda: copy.deepcopy(model),
        ),
        "compressed_size": (
            lambda: compressed_size(packed),
            "torch.save",
            lambda: torch.save(model.state_dict(), theirs),
        ),
        "save_compressed": (
            lambda: save_compressed(packed, ours),
            "torch.save",
            lambda: torch.save(model.state_dict(), theirs),
        ),
        "load_compressed": (
            lambda: load_compressed(ours, model),
            "torch.load",
            lambda: torch.load(theirs),
        ),
    }
    print(f"load average before: {os.getloadavg()}")
    print(f"model: {params / 1e6:.1f} M float32 parameters, 1 thread, {args.rounds} rounds")
    print(f"{'operation':26}{'s / 100 M':>11}{'floor':>12}{'s / 100 M':>11}{'ratio':>8}")
    for name, (action, floor_name, floor) in pairs.items():
        a, b = [], []
        for _ in range(args.rounds):  # interleaved A/B, round by round
            a.append(timed(action))
            b.append(timed(floor))
        ta, tb = statistics.median(a) * per100, statistics.median(b) * per100
        print(f"{name:26}{ta:11.2f}{floor_name:>12}{tb:11.2f}{ta / tb:8.2f}", flush=True)
    print(f"load average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
