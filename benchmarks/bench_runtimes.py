"""Simulated vs deployed: metric, size and latency on real runtimes, and how stable a
latency verdict is.

    python benchmarks/bench_runtimes.py            # both tables
    python benchmarks/bench_runtimes.py --runs 20  # the stability runs (default 20)

A printed table, not a timed test. The example project's trained LeNet and MLP on the
held-out digits, each recipe run through the plugin's own ``CheckRunner`` (what a marked
test runs), without the persistent cache:

1. **Fidelity**: float accuracy, the simulation's accuracy, the deployed artifact's,
   the gap, the artifact's size ratio and its latency ratio against the float model in
   eager PyTorch (one thread, interleaved rounds, median and 95 % interval), for int8 and
   w8a8 on ONNX Runtime and torchao (torchao's "w8a8" is dynamic per token).
2. **Stability**: one latency check (the MLP, ONNX Runtime int8) run ``--runs`` times with
   a budget 25 % above its measured ratio (every run must pass) and 25 % below (every run
   must fail); the spread of the ratio and the time the latency measurement adds.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

from pytest_compress.budgets import Budgets
from pytest_compress.checks.request import Check, CheckInputs, Recipe
from pytest_compress.checks.runner import CheckRunner
from pytest_compress.engine.specs import as_quant_spec
from pytest_compress.tables import text_table

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "example_project"))
import digits  # noqa: E402
import nets  # noqa: E402

RECIPES = (("onnxruntime", "int8"), ("onnxruntime", "w8a8"), ("torchao", "int8"),
           ("torchao", "w8a8"), ("torchao", "w8a8-dynamic"))  # fmt: skip


def models() -> dict[str, tuple[torch.nn.Module, list, list]]:
    images, vectors = digits.split("images"), digits.split("vectors")
    return {
        "LeNet": (
            nets.load(nets.Net(), nets.LENET_CHECKPOINT),
            digits.loader(images.test),
            digits.loader(images.validation),
        ),
        "MLP": (
            nets.load(nets.mlp(), nets.MLP_CHECKPOINT),
            digits.loader(vectors.test),
            digits.loader(vectors.validation),
        ),
    }


def run(runner: CheckRunner, name: str, model, data, calibration, runtime: str, recipe: str,
        **budgets: float):  # fmt: skip
    check = Check(
        Recipe(as_quant_spec(recipe)),
        Budgets(max_latency_ratio=budgets.pop("max_latency_ratio", 100.0), **budgets),
        runtime=runtime,
    )
    inputs = CheckInputs(model, data, name, f"{name} test split", calibration=calibration,
                         calibration_label=f"{name} validation split")  # fmt: skip
    return runner.run(check, inputs)


def fidelity_table(runner: CheckRunner) -> None:
    rows = []
    for name, (model, data, calibration) in models().items():
        for runtime, recipe in RECIPES:
            result = run(runner, name, model, data, calibration, runtime, recipe)
            timed = result.latency_measured
            rows.append((
                name, runtime, recipe,
                f"{result.float_metric:.2%}", f"{result.simulated_metric:.2%}",
                f"{result.compressed_metric:.2%}",
                f"{(result.compressed_metric - result.simulated_metric) * 100:+.2f} pp",
                f"{result.size_ratio:.3f}",
                f"{timed.ratio:.2f} [{timed.low:.2f}, {timed.high:.2f}]",
                f"{timed.float_ms:.3f} -> {timed.compressed_ms:.3f}",
            ))  # fmt: skip
    header = ("model", "runtime", "recipe", "float", "simulated", "deployed", "gap",
              "size ratio", "latency ratio [95%]", "ms per batch")  # fmt: skip
    print("\n".join(text_table(header, rows)))


def stability(runner: CheckRunner, runs: int) -> None:
    model, data, calibration = models()["MLP"]
    probe = run(runner, "MLP", model, data, calibration, "onnxruntime", "int8")
    measured = probe.latency_ratio
    above, below = measured * 1.25, measured * 0.75
    ratios, failures, passes, seconds = [], 0, 0, []
    for _ in range(runs):
        high = run(runner, "MLP", model, data, calibration, "onnxruntime", "int8",
                   max_latency_ratio=above)  # fmt: skip
        low = run(runner, "MLP", model, data, calibration, "onnxruntime", "int8",
                  max_latency_ratio=below)  # fmt: skip
        failures += not high.passed
        passes += low.passed
        for result in (high, low):
            ratios.append(result.latency_ratio)
            seconds.append(result.timings["latency"])
    print(f"\nstability: MLP, ONNX Runtime int8, measured ratio {measured:.3f}; {runs} runs each")
    print(f"  budget {above:.3f} (25 % above): {failures} of {runs} runs failed")
    print(f"  budget {below:.3f} (25 % below): {passes} of {runs} runs passed")
    print(
        f"  ratio over {len(ratios)} measurements: min {min(ratios):.3f}, median "
        f"{statistics.median(ratios):.3f}, max {max(ratios):.3f} "
        f"(spread {(max(ratios) - min(ratios)) / statistics.median(ratios):.1%} of the median)"
    )
    print(
        f"  time the latency measurement adds per check: median "
        f"{statistics.median(seconds):.2f} s, max {max(seconds):.2f} s"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=20)
    args = parser.parse_args()
    torch.manual_seed(0)
    runner = CheckRunner(device="cpu", cache_mb=1024, sensitivity_limit=None, results=None)
    started = time.perf_counter()
    fidelity_table(runner)
    stability(runner, args.runs)
    print(f"\n({time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
