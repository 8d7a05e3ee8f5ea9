"""A failing suite against a passing one: wall time, cold cache (run on demand).

    python benchmarks/bench_failing_suite.py [--rounds 3] [--example] [--example-noisy]

The target (issue 13, section 4): a suite with half its checks failing costs at most
twice the same suite all passing, cold cache. A failing check pays its per-layer
sensitivity (the proxy's pass, then the top ``--compress-sensitivity-layers`` layers
measured alone); a passing one does not.

(a) A generated project: a seeded residual MLP of about 21 M parameters (22 Linear
    layers), 512 random inputs labelled by the float model itself (top-1 agreement with
    the float model: 100 % in float, so every flipped prediction shows), and 16 checks of
    16 different recipes. Variant A gives every check a loose budget (all pass); variant B
    gives the 8 most damaging recipes a budget of 0.01 pp (all 8 fail: every one of them
    flips predictions), so each failing check runs a sensitivity of its own (no two
    share a recipe). Each variant runs as a whole pytest process with ``-p
    no:cacheprovider`` (nothing read or stored: cold), A and B interleaved over
    ``--rounds`` rounds; the medians, their ratio and the load average are printed.
(b) With ``--example``: ``pytest example_project`` against a copy whose
    ``test_compression.py`` has every other ``max_accuracy_drop=0.005`` made 0.00001
    (the checks whose recipe loses any accuracy then fail: on the example's held-out
    digits most recipes lose none, so few do), both cold, same rounds.
(c) With ``--example-noisy``: two copies of the example evaluated on its held-out digits
    with seeded Gaussian noise (so compression flips predictions), their stored baselines
    removed; in one every ``max_accuracy_drop`` is 0.99, in the other 0.00001. The tight
    copy fails about a third of its 33 tests on accuracy, each with its sensitivity (its
    pytest summary is printed); both copies also fail the ONNX Runtime w8a8 check on its
    fidelity to the simulation (noisy inputs), and the loose one its strict xfail, which
    passes there. Both cold, same rounds.

Nothing here is a test; torch runs one thread in the projects (a shared machine).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
EXAMPLE = HERE.parent / "example_project"
COLD = ("-p", "no:cacheprovider")

CONFTEST = """
import pytest
import torch
from torch import nn

torch.set_num_threads(1)
WIDTH, HIDDEN, BLOCKS, INPUTS, CLASSES = 512, 2048, 10, 256, 10


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.norm = nn.LayerNorm(WIDTH)
        self.up = nn.Linear(WIDTH, HIDDEN)
        self.down = nn.Linear(HIDDEN, WIDTH)

    def forward(self, x):
        return x + self.down(torch.nn.functional.gelu(self.up(self.norm(x))))


class ResidualMLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Linear(INPUTS, WIDTH)
        self.blocks = nn.Sequential(*[Block() for _ in range(BLOCKS)])
        self.norm = nn.LayerNorm(WIDTH)
        self.head = nn.Linear(WIDTH, CLASSES)

    def forward(self, x):
        return self.head(self.norm(self.blocks(self.embed(x))))


@pytest.fixture(scope="session")
def compress_model():
    torch.manual_seed(0)
    return ResidualMLP().eval()


@pytest.fixture(scope="session")
def compress_data(compress_model):
    generator = torch.Generator().manual_seed(1)
    inputs = torch.randn(512, INPUTS, generator=generator)
    with torch.no_grad():  # labelled by the float model: top-1 agreement with it
        targets = compress_model(inputs).argmax(1)
    return [(inputs[i:i + 128], targets[i:i + 128]) for i in range(0, 512, 128)]
"""

# (test name, recipe arguments, damaging: tightened in variant B)
RECIPES = (
    ("int8", 'quantize="int8"', False),
    ("int8_tensor", "quantize=QuantSpec(bits=8, per_channel=False)", False),
    ("bf16", 'quantize="bf16"', False),
    ("fp16", 'quantize="fp16"', False),
    ("int6", 'quantize="int6"', False),
    ("prune_10", "prune=0.1", False),
    ("prune_20_global", 'prune=PruneSpec(amount=0.2, scope="global")', False),
    ("int8_prune_10", 'quantize="int8", prune=0.1', False),
    ("int2", 'quantize="int2"', True),
    ("int3", 'quantize="int3"', True),
    ("int3_g64", "quantize=QuantSpec(bits=3, group_size=64)", True),
    ("prune_90", "prune=0.9", True),
    ("prune_2_4", 'prune="2:4"', True),
    ("prune_90_global", 'prune=PruneSpec(amount=0.9, scope="global")', True),
    ("int2_prune_50", 'quantize="int2", prune=0.5', True),
    ("int3_prune_80", 'quantize="int3", prune=0.8', True),
)
LOOSE, TIGHT = 0.99, 0.0001


def checks(failing: bool) -> str:
    lines = ["import pytest", "from pytest_compress import PruneSpec, QuantSpec", ""]
    for name, recipe, damaging in RECIPES:
        budget = TIGHT if failing and damaging else LOOSE
        lines += [
            f"@pytest.mark.compress({recipe}, max_accuracy_drop={budget})",
            f"def test_{name}():",
            "    pass",
            "",
        ]
    return "\n".join(lines)


def write_project(folder: Path, failing: bool) -> Path:
    folder.mkdir(parents=True)
    (folder / "conftest.py").write_text(textwrap.dedent(CONFTEST))
    (folder / "test_checks.py").write_text(checks(failing))
    (folder / "pytest.ini").write_text("[pytest]\n")
    return folder


def tighten_example(folder: Path) -> int:
    """Every other ``max_accuracy_drop=0.005`` of test_compression.py made 0.00001."""
    path = folder / "test_compression.py"
    seen = 0

    def every_other(match: re.Match[str]) -> str:
        nonlocal seen
        seen += 1
        return "max_accuracy_drop=0.00001" if seen % 2 else match[0]

    path.write_text(re.sub(r"max_accuracy_drop=0\.005", every_other, path.read_text()))
    return (seen + 1) // 2


# Appended to both copies' conftest.py for ``--example-noisy``: the held-out digits with
# seeded Gaussian noise (the later fixture definitions replace the example's), so that
# compression flips predictions and an accuracy budget of 0.00001 fails.
NOISY_DATA = """

def _noisy(dataset, seed):
    import torch
    from torch.utils.data import TensorDataset
    inputs, labels = dataset.tensors
    noise = torch.randn(inputs.shape, generator=torch.Generator().manual_seed(seed))
    return TensorDataset(inputs + 0.8 * noise, labels)


@pytest.fixture(scope="session")
def compress_data():
    return digits.loader(_noisy(digits.split("images").test, 1))


@pytest.fixture(scope="session")
def digits_vectors():
    return digits.loader(_noisy(digits.split("vectors").test, 2))
"""


def set_accuracy_budgets(folder: Path, limit: float) -> int:
    """Every ``max_accuracy_drop`` of test_compression.py made ``limit``; how many."""
    path = folder / "test_compression.py"
    text, count = re.subn(
        r"max_accuracy_drop=0\.\d+", f"max_accuracy_drop={limit}", path.read_text()
    )
    path.write_text(text)
    return count


def run_pytest(folder: Path, *args: str) -> tuple[float, str]:
    """Seconds of one whole pytest process in ``folder``, and its last line."""
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:randomly", *COLD, *args]
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    begun = time.perf_counter()
    done = subprocess.run(command, cwd=folder, capture_output=True, text=True, env=environment)
    seconds = time.perf_counter() - begun
    lines = done.stdout.strip().splitlines()
    if done.returncode not in (0, 1) or not lines:
        raise SystemExit(f"pytest broke in {folder}:\n{done.stdout}\n{done.stderr}")
    return seconds, lines[-1]


def compare(name: str, passing: Path, failing: Path, rounds: int, *args: str) -> None:
    """Interleaved cold runs of both variants; medians, ratio and load."""
    times: dict[str, list[float]] = {"passing": [], "failing": []}
    summaries: dict[str, str] = {}
    for _ in range(rounds):
        for variant, folder in (("passing", passing), ("failing", failing)):
            seconds, summaries[variant] = run_pytest(folder, *args)
            times[variant].append(seconds)
    a, b = (statistics.median(times[v]) for v in ("passing", "failing"))
    print(f"\n{name} ({rounds} rounds, cold: {' '.join((*COLD, *args))})")
    for variant in ("passing", "failing"):
        runs = ", ".join(f"{t:.1f}" for t in times[variant])
        print(f"  {variant:8} median {statistics.median(times[variant]):7.1f} s  [{runs}]")
        print(f"  {'':8} {summaries[variant]}")
    print(f"  ratio failing / passing: {b / a:.2f} (target <= 2)")
    print(f"  load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--example", action="store_true", help="also the example project")
    parser.add_argument("--only-example", action="store_true", help="the example projects only")
    parser.add_argument(
        "--example-noisy",
        action="store_true",
        help="the example on noisy held-out digits: all accuracy budgets loose, or every "
        "other one 0.00001 (most of those fail)",
    )
    parser.add_argument(
        "--sensitivity-layers", type=int, help="passed on as --compress-sensitivity-layers"
    )
    args = parser.parse_args()
    extra = (
        ()
        if args.sensitivity_layers is None
        else (f"--compress-sensitivity-layers={args.sensitivity_layers}",)
    )
    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    with tempfile.TemporaryDirectory(prefix="bench-failing-") as scratch:
        root = Path(scratch)
        if not args.only_example:
            compare(
                "21 M-parameter residual MLP, 16 checks, 8 failing in the failing variant",
                write_project(root / "passing", failing=False),
                write_project(root / "failing", failing=True),
                args.rounds,
                *extra,
            )
        if args.example or args.only_example:
            passing, failing = root / "example", root / "example_tightened"
            for folder in (passing, failing):
                shutil.copytree(EXAMPLE, folder, ignore=shutil.ignore_patterns("__pycache__"))
            tightened = tighten_example(failing)
            print(f"\nexample project: {tightened} accuracy budgets made 0.00001 in the copy")
            compare("example_project", passing, failing, args.rounds, *extra)
        if args.example_noisy:
            passing, failing = root / "noisy_loose", root / "noisy_tight"
            for folder in (passing, failing):
                shutil.copytree(EXAMPLE, folder, ignore=shutil.ignore_patterns("__pycache__"))
                with (folder / "conftest.py").open("a") as conftest:
                    conftest.write(NOISY_DATA)
                # the stored baseline holds the clean digits' numbers: each copy records its own
                (folder / ".compress-baseline.json").unlink(missing_ok=True)
            set_accuracy_budgets(passing, 0.99)
            tight = set_accuracy_budgets(failing, 0.00001)
            print(f"\nexample on noisy digits: {tight} accuracy budgets 0.99, or 0.00001")
            compare("example_project, noisy digits", passing, failing, args.rounds, *extra)


if __name__ == "__main__":
    main()
