"""What the plugin costs beyond the forward passes a check cannot avoid (run on demand).

    python benchmarks/bench_overhead.py [--repeats 3] [--device cpu]

Three measurements, each the median of ``--repeats`` runs, printed beside their ratios:

(a) For two suites of K = 6 marked checks (weight quantization and pruning recipes) on
    one model -- the example's LeNet on the held-out digits, and torchvision's resnet18 on
    2,000 random 3x64x64 images served by a DataLoader -- the plugin's wall time from the
    first check's start to the last check's end, as the plugin records it in its JSON
    report (a cold run: ``--compress-no-cache`` reads nothing from the cache, but
    fingerprints and stores like a first run), against K + 1 bare evaluation passes of the same
    model over the same batches already in memory (``torch.inference_mode``). The
    plugin's own cost per check is its time minus those passes, divided by K.
(b) For the resnet18 suite: a rerun with nothing changed (warm cache) against a cold
    run, both timed as whole pytest processes. Beside them, the floor no rerun can go
    below: the same pytest run with ``--compress-disable`` (interpreter, pytest, torch
    and torchvision imports, the user's fixtures untouched), and a bare ``python -c
    "import torch, torchvision"``.
(c) ``compress_model`` with int4 per-channel quantization and 80 % global pruning of a
    25 M-parameter MLP (``bench_engine.py``'s model).

Each suite runs as a real pytest process in a temporary folder; nothing here is a test.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent
EXAMPLE = HERE.parent / "example_project"
K = 6

RECIPES = """
import pytest
from pytest_compress import PruneSpec, QuantSpec

BUDGET = dict(max_accuracy_drop=0.99)  # the budgets do not matter here, the work does


@pytest.mark.compress(quantize="int8", **BUDGET)
def test_int8():
    pass


@pytest.mark.compress(quantize="int4", **BUDGET)
def test_int4():
    pass


@pytest.mark.compress(quantize=QuantSpec(bits=8, parameters="all", per_channel=False), **BUDGET)
def test_int8_all_parameters():
    pass


@pytest.mark.compress(prune=0.5, **BUDGET)
def test_prune_50():
    pass


@pytest.mark.compress(prune="2:4", **BUDGET)
def test_prune_2_4():
    pass


@pytest.mark.compress(prune=PruneSpec(amount=0.8, scope="global"), quantize="int4", **BUDGET)
def test_deep_compression():
    pass
"""

CONFTEST = """
import pytest
import suite


@pytest.fixture(scope="session")
def compress_model():
    return suite.model()


@pytest.fixture(scope="session")
def compress_data():
    return suite.data()
"""

LENET_SUITE = f"""
import sys

sys.path.insert(0, {str(EXAMPLE)!r})
import digits  # noqa: E402
import nets  # noqa: E402


def model():
    return nets.load(nets.Net(), nets.LENET_CHECKPOINT)


def data():
    return digits.loader(digits.split("images").test)
"""

RESNET_SUITE = """
import torch
from torch.utils.data import DataLoader, TensorDataset
from torchvision.models import resnet18


def model():
    torch.manual_seed(0)
    return resnet18(num_classes=10).eval()


def data():
    generator = torch.Generator().manual_seed(1)
    images = torch.randn(2000, 3, 64, 64, generator=generator)
    labels = torch.randint(0, 10, (2000,), generator=generator)
    return DataLoader(TensorDataset(images, labels), batch_size=100)
"""


def write_suite(folder: Path, suite: str) -> Path:
    folder.mkdir(parents=True)
    (folder / "suite.py").write_text(textwrap.dedent(suite))
    (folder / "conftest.py").write_text(textwrap.dedent(CONFTEST))
    (folder / "test_recipes.py").write_text(textwrap.dedent(RECIPES))
    (folder / "pytest.ini").write_text("[pytest]\n")
    return folder


def run_pytest(folder: Path, *args: str) -> float:
    """Seconds of one whole pytest process in ``folder``."""
    command = [sys.executable, "-m", "pytest", "-q", *args]
    begun = time.perf_counter()
    done = subprocess.run(command, cwd=folder, capture_output=True, text=True)
    seconds = time.perf_counter() - begun
    if done.returncode != 0:
        raise SystemExit(f"pytest failed in {folder}:\n{done.stdout}\n{done.stderr}")
    return seconds


def plugin_span(report: Path, *, cached: bool = False) -> float:
    """First check's start to last check's end, as the plugin recorded them."""
    checks = json.loads(report.read_text())["checks"]
    if len(checks) != K or any(check["cached"] != cached for check in checks):
        state = "cached" if cached else "measured"
        raise SystemExit(f"{report}: expected {K} checks, all {state}")
    return max(c["timings"]["finished"] for c in checks) - min(
        c["timings"]["started"] for c in checks
    )


def bare_passes(folder: Path, device: str) -> Callable[[], None]:
    """K + 1 plain inference passes over the suite's batches, already in memory."""
    import torch

    sys.path.insert(0, str(folder))
    try:
        import suite  # the suite's own module, written above
    finally:
        sys.path.remove(str(folder))
    sys.modules.pop("suite", None)
    model = suite.model().to(device).eval()
    batches = [(x.to(device), y.to(device)) for x, y in suite.data()]

    def passes() -> None:
        with torch.inference_mode():
            for _ in range(K + 1):
                for inputs, _targets in batches:
                    model(inputs)
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    return passes


def median(action: Callable[[], float], repeats: int) -> float:
    return statistics.median(action() for _ in range(repeats))


def timed(action: Callable[[], None]) -> float:
    begun = time.perf_counter()
    action()
    return time.perf_counter() - begun


def overhead(name: str, folder: Path, repeats: int, device: str) -> None:
    """(a) for one suite: cold plugin spans against bare passes."""
    report = folder / "report.json"
    spans = []
    for _ in range(repeats):
        run_pytest(
            folder,
            "--compress-no-cache",
            f"--compress-device={device}",
            f"--compress-report={report}",
        )
        spans.append(plugin_span(report))
    passes = bare_passes(folder, device)
    passes()  # warm up: the first pass pays for allocations
    bare = median(lambda: timed(passes), repeats)
    span = statistics.median(spans)
    own = (span - bare) / K
    print(
        f"(a) {name}: plugin {span:7.3f} s for {K} checks, bare {K + 1} passes {bare:7.3f} s: "
        f"ratio {span / bare:.3f}; plugin's own cost per check {own * 1000:7.1f} ms"
    )


def warm_vs_cold(folder: Path, repeats: int, device: str) -> None:
    """(b): whole processes, a fresh cache (cold) then the same cache again (warm)."""
    colds, warms, spans = [], [], []
    report = folder / "run.json"
    for i in range(repeats):
        args = ("-o", f"cache_dir={folder / f'.cache-{i}'}", f"--compress-device={device}")
        colds.append(run_pytest(folder, *args, f"--compress-report={report}"))
        plugin_span(report, cached=False)
        warms.append(run_pytest(folder, *args, f"--compress-report={report}"))
        spans.append(plugin_span(report, cached=True))  # the rerun measured nothing again
    imports = median(
        lambda: timed(
            lambda: subprocess.run([sys.executable, "-c", "import torch, torchvision"], check=True)
        ),
        repeats,
    )
    # The floor of any rerun: the same pytest process with every check skipped.
    disabled = median(lambda: run_pytest(folder, "--compress-disable"), repeats)
    cold, warm = statistics.median(colds), statistics.median(warms)
    print(
        f"(b) resnet18: warm rerun {warm:6.2f} s, cold run {cold:6.2f} s: ratio {warm / cold:.3f}\n"
        f"    floor: the same pytest run with --compress-disable {disabled:.2f} s "
        f"(ratio {disabled / cold:.3f}), of which python -c 'import torch, torchvision' "
        f"{imports:.2f} s;\n    the plugin's checks in the rerun (first start to last end) "
        f"{statistics.median(spans):.2f} s"
    )


def engine(repeats: int) -> None:
    """(c): the engine benchmark's model and recipe."""
    sys.path.insert(0, str(HERE))
    from bench_engine import big_model, median_seconds

    from pytest_compress import compress_model
    from pytest_compress.engine.specs import PruneSpec

    model = big_model()
    parameters = sum(p.numel() for p in model.parameters())
    recipe = {"quantize": "int4", "prune": PruneSpec(amount=0.8, scope="global")}
    seconds = median_seconds(lambda: compress_model(model, **recipe), repeats)
    print(
        f"(c) int4 per-channel + prune 80% (global) of {parameters / 1e6:.1f} M parameters: "
        f"{seconds:.3f} s"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--only", choices=("a", "b", "c"), action="append")
    options = parser.parse_args()
    parts = options.only or ["a", "b", "c"]
    import torch

    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs, "
        f"device {options.device}, median of {options.repeats}; "
        f"load average at start {os.getloadavg()[0]:.2f}"
    )
    with tempfile.TemporaryDirectory(prefix="bench-overhead-") as scratch:
        lenet = write_suite(Path(scratch, "lenet"), LENET_SUITE)
        resnet = write_suite(Path(scratch, "resnet18"), RESNET_SUITE)
        if "a" in parts:
            overhead("LeNet on digits   ", lenet, options.repeats, options.device)
            overhead("resnet18, 2000 img", resnet, options.repeats, options.device)
        if "b" in parts:
            warm_vs_cold(resnet, options.repeats, options.device)
    if "c" in parts:
        engine(options.repeats)
    print(f"load average at the end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
