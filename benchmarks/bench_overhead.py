"""What the plugin costs beyond the forward passes a check cannot avoid (run on demand).

    python benchmarks/bench_overhead.py [--repeats 3] [--device cpu] [--only a] [--suite mlp]
        [--threads 1]

Three measurements, each the median of ``--repeats`` runs, printed beside their ratios:

(a) For three suites of K = 6 marked checks on one model -- the example's LeNet on the
    held-out digits, torchvision's resnet18 on 2,000 random 3x64x64 images served by a
    DataLoader (weight quantization and pruning recipes), and an MLP of 25.5 M parameters
    on 2,000 random rows labelled by the float model (int8, int4, prune 0.5, prune 0.8 +
    int4, w8a8 and a sparsity search) -- the plugin's wall time from the first check's
    start to the last check's end, as the plugin records it in its JSON report (a cold
    run: ``--compress-no-cache`` reads nothing from the cache, but fingerprints and stores
    like a first run), against the bare evaluation passes of the same model over the same
    batches already in memory (``torch.inference_mode``) that the suite cannot avoid:
    counted from the report (``forward_passes``), one for the float model, one per
    evaluation (a search's trials each count) and one per calibration pass (w8a8). The
    plugin run and the bare passes alternate round by round, so a change of the machine's
    load hits both; the ratio printed is the median of the rounds' ratios. The plugin's
    own cost per check is its time minus those passes, divided by K.
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
SUITE_NAMES = {
    "lenet": "LeNet on digits   ",
    "resnet18": "resnet18, 2000 img",
    "mlp": "MLP 25.5 M, 2000 rows",
}

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

MLP_RECIPES = """
import pytest
from pytest_compress import PruneSpec

BUDGET = dict(max_accuracy_drop=0.99)  # the budgets do not matter here, the work does


@pytest.mark.compress(quantize="int8", **BUDGET)
def test_int8():
    pass


@pytest.mark.compress(quantize="int4", **BUDGET)
def test_int4():
    pass


@pytest.mark.compress(prune=0.5, **BUDGET)
def test_prune_50():
    pass


@pytest.mark.compress(prune=PruneSpec(amount=0.8, scope="global"), quantize="int4", **BUDGET)
def test_deep_compression():
    pass


@pytest.mark.compress(quantize="w8a8", **BUDGET)
def test_w8a8():
    pass


@pytest.mark.compress(search="sparsity", max_accuracy_drop=0.05)  # no size budget
def test_search_sparsity():
    pass
"""

# bench_engine.py's model: 25.5 M parameters; labels are the float model's own answers,
# so the sparsity search has a real accuracy to lose.
MLP_SUITE = """
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

WIDTHS = [4000, 4000, 2000, 500, 1000]


def model():
    torch.manual_seed(0)
    layers = []
    for fan_in, fan_out in zip(WIDTHS, WIDTHS[1:]):
        layers += [nn.Linear(fan_in, fan_out), nn.ReLU()]
    return nn.Sequential(*layers[:-1]).eval()


def data():
    generator = torch.Generator().manual_seed(1)
    inputs = torch.randn(2000, WIDTHS[0], generator=generator)
    with torch.inference_mode():
        labels = model()(inputs).argmax(1)
    return DataLoader(TensorDataset(inputs, labels), batch_size=250)
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


def write_suite(folder: Path, suite: str, recipes: str = RECIPES) -> Path:
    folder.mkdir(parents=True)
    (folder / "suite.py").write_text(textwrap.dedent(suite))
    (folder / "conftest.py").write_text(textwrap.dedent(CONFTEST))
    (folder / "test_recipes.py").write_text(textwrap.dedent(recipes))
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


def forward_passes(report: Path) -> int:
    """The passes over the data a suite cannot avoid, read from its report: the float
    model once, each evaluation (every trial of a search), and each calibration pass
    (activation observers, GPTQ's Hessians) over the data."""
    checks = json.loads(report.read_text())["checks"]
    passes = 1
    for check in checks:
        passes += check["search"]["evaluations"] if check["search"] else 1
        quantize = check["quantize"] or {}
        observes = quantize.get("activation_bits") and quantize.get("observer") != "dynamic"
        passes += 1 if observes or quantize.get("method") == "gptq" else 0
    return passes


def bare_passes(folder: Path, device: str, count: int) -> Callable[[], None]:
    """``count`` plain inference passes over the suite's batches, already in memory."""
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
            for _ in range(count):
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
    """(a) for one suite: cold plugin spans against bare passes, alternating round by round."""
    report = folder / "report.json"

    def cold_span() -> float:
        run_pytest(
            folder,
            "--compress-no-cache",
            f"--compress-device={device}",
            f"--compress-report={report}",
        )
        return plugin_span(report)

    spans = [cold_span()]  # the first round also says how many passes the suite needs
    count = forward_passes(report)
    passes = bare_passes(folder, device, count)
    passes()  # warm up: the first pass pays for allocations
    bares = [timed(passes)]
    for _ in range(repeats - 1):
        spans.append(cold_span())
        bares.append(timed(passes))
    span, bare = statistics.median(spans), statistics.median(bares)
    ratios = [s / b for s, b in zip(spans, bares, strict=True)]
    ratio = statistics.median(ratios)
    own = (span - bare) / K
    print(
        f"(a) {name}: plugin {span:7.3f} s for {K} checks, bare {count} passes {bare:7.3f} s: "
        f"ratio {ratio:.3f} (rounds: {', '.join(f'{r:.2f}' for r in ratios)}); "
        f"plugin's own cost per check {own * 1000:7.1f} ms; load {os.getloadavg()[0]:.2f}"
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
    parser.add_argument("--suite", choices=tuple(SUITE_NAMES), action="append", help="for (a)")
    parser.add_argument(
        "--threads",
        type=int,
        help="torch's threads here and in every pytest run (OMP_NUM_THREADS); on a shared "
        "machine 1 keeps a busy neighbour from stalling a thread the others wait for",
    )
    options = parser.parse_args()
    parts = options.only or ["a", "b", "c"]
    if options.threads:
        os.environ["OMP_NUM_THREADS"] = str(options.threads)  # read by the pytest runs' torch
    import torch

    if options.threads:
        torch.set_num_threads(options.threads)

    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs, "
        f"device {options.device}, median of {options.repeats}; "
        f"load average at start {os.getloadavg()[0]:.2f}"
    )
    with tempfile.TemporaryDirectory(prefix="bench-overhead-") as scratch:
        lenet = write_suite(Path(scratch, "lenet"), LENET_SUITE)
        resnet = write_suite(Path(scratch, "resnet18"), RESNET_SUITE)
        mlp = write_suite(Path(scratch, "mlp"), MLP_SUITE, MLP_RECIPES)
        suites = {"lenet": lenet, "resnet18": resnet, "mlp": mlp}
        if "a" in parts:
            for suite in options.suite or list(suites):
                overhead(SUITE_NAMES[suite], suites[suite], options.repeats, options.device)
        if "b" in parts:
            warm_vs_cold(resnet, options.repeats, options.device)
    if "c" in parts:
        engine(options.repeats)
    print(f"load average at the end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
