"""Engine seconds per 100 M parameters, as ratios to their floors in the same run (on demand).

    python benchmarks/bench_engine_speed.py [--millions 50] [--rounds 3] [--ops save,load]
    python benchmarks/bench_engine_speed.py --base /path/to/old/checkout   # before/after

Each operation (A) and its floor (B) run interleaved, round by round, and the table shows
medians, so a machine whose load changes mid-run shifts both alike and cannot invert a
ratio. Before every call the freed memory is handed back to the system (``malloc_trim``),
so each call, ours and its floor's alike, starts from the allocator state of a process
that loads once; ``--warm`` skips that, and the ratios then depend on which call happened
to reuse the other's freed pages. Floors: ``torch.fake_quantize_per_channel_affine`` over
every weight (the kernel any quantizer pays), ``copy.deepcopy`` (every recipe copies the
user's model), ``torch.save`` / ``torch.load`` of the float ``state_dict``. Saving and
loading run on two compressed copies: int4 with 80 % pruning (sparse layouts) and int8 per
channel (the file format's bound: save within 2x ``torch.save``, load within 3x
``torch.load``).
``--ops`` keeps the rows whose names contain one of its words. With ``--base``, each row
runs in a fresh process against the code at that path (``PYTHONPATH``), then against this
checkout, row by row, so "before" and "after" share the machine's load. The load average
is printed before and after. Nothing here is a test.
"""

from __future__ import annotations

import argparse
import copy
import ctypes
import gc
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

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


def _malloc_trim() -> Callable[[], object]:
    try:
        return ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc: nothing to hand back
        return lambda *_: None


MALLOC_TRIM = _malloc_trim()
WARM = "--warm" in sys.argv  # keep freed memory for the next call (the order then decides)


def timed(action: Callable[[], object]) -> float:
    """Seconds of one call, from the same allocator state for every call: the last
    call's freed memory handed back to the system first. Otherwise an operation's time
    depends on the one before it: measured here, ``torch.load`` reused the pages
    ``load_compressed`` had just freed (no page faults) while ``load_compressed`` got
    fresh ones (200 MB of faults, 0.1 s), so the ratio said 3.5 where either order of
    fresh memory gives 1.2."""
    if not WARM:
        gc.collect()
        MALLOC_TRIM(0)
    start = time.perf_counter()
    action()
    return time.perf_counter() - start


Pairs = dict[str, tuple[Callable[[], object], str, Callable[[], object]]]


def pairs_for(model: nn.Module) -> Pairs:
    """Each operation, its floor's name and its floor."""
    pruned = PruneSpec(amount=0.8, scope="global")
    packed = compress_model(model, quantize="int4", prune=pruned)
    int8 = compress_model(model, quantize="int8")
    tmp = tempfile.mkdtemp(dir=os.environ.get("TMPDIR"))
    ours, ours8 = os.path.join(tmp, "m.ptcz"), os.path.join(tmp, "m8.ptcz")
    theirs = os.path.join(tmp, "m.pt")
    save_compressed(packed, ours)
    save_compressed(int8, ours8)
    torch.save(model.state_dict(), theirs)
    return {
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
        "save_compressed int8": (
            lambda: save_compressed(int8, ours8),
            "torch.save",
            lambda: torch.save(model.state_dict(), theirs),
        ),
        "load_compressed int8": (
            lambda: load_compressed(ours8, model),
            "torch.load",
            lambda: torch.load(theirs),
        ),
    }


def selected(names: list[str], ops: str) -> list[str]:
    words = [word for word in ops.split(",") if word]
    return [name for name in names if not words or any(word in name for word in words)]


def row(name: str, floor_name: str, a: list[float], b: list[float], per100: float) -> str:
    ta, tb = statistics.median(a) * per100, statistics.median(b) * per100
    return f"{name:26}{ta:11.2f}{floor_name:>12}{tb:11.2f}{ta / tb:8.2f}"


HEADER = f"{'operation':26}{'s / 100 M':>11}{'floor':>12}{'s / 100 M':>11}{'ratio':>8}"


def run_here(args: argparse.Namespace) -> None:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = build(args.millions)
    params = sum(p.numel() for p in model.parameters())
    per100 = 1e8 / params
    pairs = pairs_for(model)
    if not args.rows_only:
        print(f"load average before: {os.getloadavg()}")
        print(f"model: {params / 1e6:.1f} M float32 parameters, 1 thread, {args.rounds} rounds")
        print(HEADER)
    for name in selected(list(pairs), args.ops):
        action, floor_name, floor = pairs[name]
        a, b = [], []
        for _ in range(args.rounds):  # interleaved A/B, round by round
            a.append(timed(action))
            b.append(timed(floor))
        print(row(name, floor_name, a, b, per100), flush=True)
    if not args.rows_only:
        print(f"load average after: {os.getloadavg()}")


def run_against(args: argparse.Namespace, base: Path) -> None:
    """Each row in a fresh process, the old code's then this checkout's."""
    here = Path(__file__).resolve()
    codes = {"before": base.resolve(), "after": here.parent.parent}
    print(f"load average before: {os.getloadavg()}")
    print(f"model: {args.millions:g} M float32 parameters, 1 thread, {args.rounds} rounds")
    print(f"{'':7}{HEADER}")
    for op in [word for word in args.ops.split(",") if word] or ["size", "save", "load"]:
        for label, code in codes.items():
            command = [sys.executable, str(here), "--rows-only", "--ops", op]
            command += ["--millions", str(args.millions), "--rounds", str(args.rounds)]
            command += ["--warm"] if args.warm else []
            env = dict(os.environ, PYTHONPATH=str(code), OMP_NUM_THREADS="1")
            # not run from a checkout: the code under test comes from PYTHONPATH alone
            done = subprocess.run(command, env=env, capture_output=True, text=True, cwd="/")
            lines = done.stdout.strip().splitlines() or [f"failed: {done.stderr[-300:]}"]
            for line in lines:
                print(f"{label:7}{line}", flush=True)
    print(f"load average after: {os.getloadavg()}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--millions", type=float, default=50)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--ops", default="", help="comma-separated words; rows naming one")
    parser.add_argument("--base", type=Path, help="a checkout of the old code, for before/after")
    parser.add_argument("--warm", action="store_true", help="no malloc_trim between calls")
    parser.add_argument("--rows-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.base is not None:
        run_against(args, args.base)
    else:
        run_here(args)


if __name__ == "__main__":
    main()
