"""A multi-billion-parameter bf16 model checked through pytest in the low-memory mode.

    python benchmarks/bench_low_memory.py                       # 2.0 B params, int8 + int4
    python benchmarks/bench_low_memory.py --layers 4 --modes on,off   # both modes, small

Writes a pytest project into a temporary folder: a residual stack of ``--layers``
Linear(``--width``, ``--width``) layers built directly in bfloat16 (no float32 spike),
random inputs, and two checks (int8 and int4, weight-only, ``metric="cosine"`` against
the float model's outputs). Each mode runs pytest in a fresh process under
``/usr/bin/time -v`` (one thread) and prints:

- the model's bytes, the process's RSS right after building it, and its peak RSS;
- peak RSS as a multiple of the model's bytes, against the target 1.5x + 0.5 GB;
- what the checks added: peak minus the RSS after building, as a multiple of the bytes;
- wall time, and the load average before and after.

Nothing here is a test; the tests compare the modes' numbers on small models.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

GB = 10**9  # decimal, as the target (1.5x the bytes + 0.5 GB) is written

CONFTEST = """
import json, os, resource
import pytest
import torch
from torch import nn

torch.set_num_threads(1)
LAYERS, WIDTH, ROWS, BATCHES = {layers}, {width}, {rows}, {batches}


def rss():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024


class Stack(nn.Module):
    def __init__(self):
        super().__init__()
        self.layers = nn.ModuleList(
            nn.Linear(WIDTH, WIDTH, bias=False, dtype=torch.bfloat16) for _ in range(LAYERS)
        )
        self.norm = nn.LayerNorm(WIDTH, dtype=torch.bfloat16)

    def forward(self, x):
        for layer in self.layers:
            x = self.norm(x + torch.relu(layer(x)))
        return x


@pytest.fixture(scope="session")
def compress_model():
    torch.manual_seed(0)
    model = Stack().eval()
    with open("rss.json", "w") as f:
        json.dump({{"after_build": rss(), "bytes": sum(
            p.numel() * p.element_size() for p in model.parameters())}}, f)
    return model


@pytest.fixture(scope="session")
def compress_data():
    generator = torch.Generator().manual_seed(1)
    return [torch.randn(ROWS, WIDTH, generator=generator).to(torch.bfloat16)
            for _ in range(BATCHES)]
"""

TESTS = """
import pytest

@pytest.mark.compress(quantize="int8", metric="cosine", max_accuracy_drop=0.05)
def test_int8():
    pass

@pytest.mark.compress(quantize="int4", metric="cosine", max_accuracy_drop=0.5)
def test_int4():
    pass
"""


def load_average() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def run(folder: Path, mode: str) -> dict:
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    environment.pop("PYTEST_ADDOPTS", None)
    command = [
        "/usr/bin/time",
        "-v",
        sys.executable,
        "-m",
        "pytest",
        "-q",
        "-p",
        "no:cacheprovider",
        "-p",
        "no:xdist",
        f"--compress-low-memory={mode}",
        "--compress-report=report.json",
    ]
    started = time.perf_counter()
    done = subprocess.run(command, cwd=folder, env=environment, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    found = re.search(r"Maximum resident set size \(kbytes\): (\d+)", done.stderr)
    if done.returncode != 0 or found is None:
        print(done.stdout[-3000:], done.stderr[-3000:])
        raise SystemExit(f"pytest failed in mode {mode} (exit {done.returncode})")
    measured = json.loads((folder / "rss.json").read_text())
    report = json.loads((folder / "report.json").read_text())
    return {
        "peak": int(found[1]) * 1024,
        "seconds": seconds,
        **measured,
        "checks": {c["test"].split("::")[-1]: c for c in report["checks"]},
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--layers", type=int, default=30)
    parser.add_argument("--width", type=int, default=8192)
    parser.add_argument("--rows", type=int, default=8)
    parser.add_argument("--batches", type=int, default=2)
    parser.add_argument("--modes", default="on")
    args = parser.parse_args()
    print(f"load average before: {load_average()}")
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-low-memory-") as scratch:
        folder = Path(scratch)
        (folder / "conftest.py").write_text(
            textwrap.dedent(CONFTEST).format(
                layers=args.layers, width=args.width, rows=args.rows, batches=args.batches
            )
        )
        (folder / "test_big.py").write_text(textwrap.dedent(TESTS))
        for mode in args.modes.split(","):
            rows.append((mode, run(folder, mode)))
    params = args.layers * args.width * args.width
    shape = f"{args.layers} x Linear({args.width}, {args.width})"
    print(f"model: {shape} bf16, {params / 1e9:.2f} B params")
    print(
        "mode  bytes     after build  peak      peak/bytes  target (1.5x+0.5GB)  "
        "added/bytes  seconds"
    )
    for mode, row in rows:
        size, peak = row["bytes"], row["peak"]
        target = 1.5 * size + 0.5 * GB
        print(
            f"{mode:<5} {size / GB:6.2f} GB {row['after_build'] / GB:8.2f} GB  "
            f"{peak / GB:6.2f} GB {peak / size:8.2f}x   {target / GB:8.2f} GB "
            f"{'met' if peak <= target else 'MISSED':>6}   "
            f"{(peak - row['after_build']) / size:8.2f}x  {row['seconds']:8.0f}"
        )
        for name, check in row["checks"].items():
            print(
                f"      {name}: cosine {check['compressed_metric']:.5f}, size ratio "
                f"{check['size_ratio']:.4f}, low_memory {check['low_memory']}, "
                f"{'passed' if check['passed'] else 'failed'}"
            )
    print(f"load average after: {load_average()}")


if __name__ == "__main__":
    main()
