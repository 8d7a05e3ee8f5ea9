"""Peak memory of the engine's operations as multiples of the model's bytes (run on demand).

    python benchmarks/bench_memory.py [--sizes 10,50,150] [--wide] [--ops int8,int4,...]
    python benchmarks/bench_memory.py --base /path/to/old/checkout   # before/after, same run

Each (model, operation) runs in a fresh subprocess (one thread): the model is built in
place (no construction spike), the process's peak RSS is reset (``/proc/self/clear_refs``),
the operation runs, and the table prints ``(peak RSS - RSS before the operation) / model
bytes``. Models: MLPs of 2048x2048 layers (16 MB float32 tensors) with about 10-400 M
parameters, and one 24000x4096 layer in float32 and bfloat16. Operations:

- ``int8`` / ``int4``: ``compress_model`` weight-only, per channel;
- ``prune80``: ``compress_model`` with 80 % global magnitude pruning;
- ``size`` / ``save`` / ``load``: ``compressed_size``, ``save_compressed`` and
  ``load_compressed`` of the int8 copy (built before the peak is reset). ``load`` returns
  a copy of the model, 1.0x by itself: its column counts it, and ``load-copy`` is the
  same run's peak beyond that copy (the decoder's own cost);
- ``check``: a whole int8 check through ``CheckRunner`` (deep-copy mode, 256 rows);
- ``int8-low`` / ``int4-low`` / ``check-low``: the same in the low-memory mode (a shallow
  clone holding the weights' mappings; ``engine/lazy.py``): not run by default.

With ``--base``, every case also runs against the code at that path (``PYTHONPATH``),
interleaved case by case, so "before" and "after" share the machine's load. The load
average is printed before and after. The last lines hold ``size``, ``save`` and the
load beyond its copy against the file format's bound, 0.3x the model's bytes + 256 MB.
Nothing here is a test.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
WIDTH = 2048
OPS = ("int8", "int4", "prune80", "size", "save", "load", "check")

CHILD = r"""
import json, os, resource, sys, tempfile
import torch
torch.set_num_threads(1)
from torch import nn

spec = json.loads(sys.argv[1])

def rss():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024

def peak():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024

def reset_peak():
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")

def build():
    dtype = getattr(torch, spec["dtype"])
    torch.manual_seed(0)
    if spec["model"] == "wide":
        shapes = [(24000, 4096)]
    else:
        shapes = [(spec["width"], spec["width"])] * spec["layers"]
    layers = []
    for out_f, in_f in shapes:
        layer = nn.Linear(in_f, out_f, device="meta", dtype=dtype)
        layer.to_empty(device="cpu")
        with torch.no_grad():
            layer.weight.normal_(0, in_f ** -0.5)
            layer.bias.normal_(0, 0.01)
        layers += [layer, nn.ReLU()]
    return nn.Sequential(*layers[:-1]).eval()

from pytest_compress import compress_model, compressed_size, load_compressed, save_compressed
from pytest_compress.engine.specs import PruneSpec

model = build()
model_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
op = spec["op"]
prepared = None
path = os.path.join(spec["tmp"], "model.ptcz")
if op in ("size", "save", "load"):
    prepared = compress_model(model, quantize="int8")
if op == "load":
    save_compressed(prepared, path)
    prepared = None
if op in ("check", "check-low"):
    from pytest_compress.budgets import Budgets
    from pytest_compress.checks.request import Check, CheckInputs, Recipe
    from pytest_compress.checks.runner import CheckRunner
    from pytest_compress.engine.specs import QuantSpec
    first = model[0]
    x = torch.randn(256, first.in_features, dtype=first.weight.dtype)
    with torch.no_grad():
        y = model(x).argmax(1)
    data = [(x[i:i + 64], y[i:i + 64]) for i in range(0, 256, 64)]
    runner = CheckRunner(
        device="cpu",
        cache_mb=0,
        sensitivity_limit=None,
        results=None,
        low_memory="on" if op == "check-low" else "off",
    )
    check = Check(Recipe(QuantSpec(bits=8)), Budgets(max_accuracy_drop=0.99))
import gc; gc.collect()
before = rss()
reset_peak()
if op == "int8":
    out = compress_model(model, quantize="int8")
elif op == "int4":
    out = compress_model(model, quantize="int4")
elif op == "prune80":
    out = compress_model(model, prune=PruneSpec(amount=0.8, scope="global"))
elif op == "size":
    out = compressed_size(prepared)
elif op == "save":
    out = save_compressed(prepared, path)
elif op == "load":
    out = load_compressed(path, model)
elif op in ("int8-low", "int4-low"):
    out = compress_model(model, quantize=op.split("-")[0], low_memory=True)
elif op in ("check", "check-low"):
    out = runner.run(check, CheckInputs(model, data, "m", "d"))
top = peak()
# load_compressed returns a copy of the model: that much of the peak is the result itself
result = 0
if op == "load":
    result = sum(t.numel() * t.element_size() for t in out.state_dict().values())
print(json.dumps({"extra": top - before, "model_bytes": model_bytes, "result_bytes": result}))
"""


def cases(sizes: list[int], wide: bool) -> list[dict]:
    out = []
    per_layer = WIDTH * WIDTH + WIDTH
    for millions in sizes:
        layers = max(1, round(millions * 1e6 / per_layer))
        params = layers * per_layer
        out.append(
            {
                "model": "mlp",
                "layers": layers,
                "width": WIDTH,
                "dtype": "float32",
                "label": f"MLP {params / 1e6:.0f} M fp32",
            }
        )
    if wide:
        for dtype in ("float32", "bfloat16"):
            out.append({"model": "wide", "dtype": dtype, "label": f"24000x4096 {dtype}"[:22]})
    return out


def run_case(case: dict, op: str, code: Path, tmp: str) -> dict | None:
    env = dict(os.environ, PYTHONPATH=str(code), OMP_NUM_THREADS="1")
    spec = dict(case, op=op, tmp=tmp)
    done = subprocess.run(
        [sys.executable, "-c", CHILD, json.dumps(spec)],
        env=env,
        capture_output=True,
        text=True,
        cwd=tmp,  # not a checkout: the code under test comes from PYTHONPATH
    )
    if done.returncode != 0:
        print(f"  {case['label']} {op} failed: {done.stderr.strip().splitlines()[-1:]}")
        return None
    return json.loads(done.stdout.strip().splitlines()[-1])


def columns(ops: list[str]) -> list[str]:
    """The table's columns: each operation, and the load's peak beyond its copy."""
    return [name for op in ops for name in ((op, "load-copy") if op == "load" else (op,))]


def multiples(op: str, result: dict) -> dict[str, float]:
    """The run's peak in model bytes, per column it fills."""
    out = {op: result["extra"] / result["model_bytes"]}
    if op == "load":
        out["load-copy"] = (result["extra"] - result["result_bytes"]) / result["model_bytes"]
    return out


BOUND_MB = 256  # the file format's bound: 0.3x the model's bytes + 256 MB


def bound_lines(results: dict, model_bytes: dict[str, int]) -> list[str]:
    lines = []
    for label, ops in results.items():
        limit = 0.3 + BOUND_MB * 2**20 / model_bytes[label]
        for op in ("size", "save", "load-copy"):
            for name, multiple in ops.get(op, {}).items():
                if multiple is not None:
                    verdict = "within" if multiple <= limit else "OVER"
                    lines.append(
                        f"{label:24}{op:>10} {name:>6}: {multiple:.2f}x, bound {limit:.2f}x: "
                        f"{verdict}"
                    )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="10,50,150")
    parser.add_argument("--wide", action="store_true")
    parser.add_argument("--ops", default=",".join(OPS))
    parser.add_argument("--base", type=Path, help="a checkout of the old code, for before/after")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",") if s]
    ops = [op for op in args.ops.split(",") if op]
    codes = {"after": HERE.parent}
    if args.base is not None:
        codes = {"before": args.base.resolve(), "after": HERE.parent}
    print(f"load average before: {os.getloadavg()}")
    header = f"{'model':24}" + "".join(f"{name:>16}" for name in columns(ops))
    print(
        "peak RSS - RSS before the operation, in model bytes"
        + " (before -> after)" * (len(codes) > 1)
    )
    print(header)
    results: dict[str, dict] = {}
    model_bytes: dict[str, int] = {}
    with tempfile.TemporaryDirectory(dir=os.environ.get("TMPDIR")) as tmp:
        for case in cases(sizes, args.wide):
            cells: dict[str, list[str]] = {}
            for op in ops:
                for name, code in codes.items():  # interleaved: before, then after
                    result = run_case(case, op, code, tmp)
                    filled = multiples(op, result) if result is not None else {}
                    if result is not None:
                        model_bytes[case["label"]] = result["model_bytes"]
                    for column in columns([op]):
                        multiple = filled.get(column)
                        results.setdefault(case["label"], {}).setdefault(column, {})[name] = (
                            multiple
                        )
                        cells.setdefault(column, []).append(
                            "-" if multiple is None else f"{multiple:.2f}"
                        )
            row = f"{case['label']:24}" + "".join(
                f"{' -> '.join(cells[column]) + 'x':>16}" for column in columns(ops)
            )
            print(row, flush=True)
    print(f"load average after: {os.getloadavg()}")
    for line in bound_lines(results, model_bytes):
        print(line)
    print(json.dumps(results))


if __name__ == "__main__":
    main()
