"""A tiny user project for the plugin's pytester tests: a conftest with model and data.

The model is a seeded MLP and the data are labelled by the float model itself, so the
float accuracy is exactly 100 %, needs no training, and every compression loss shows
as a drop. ``CALLS`` counts forward passes per model object, so a test can tell the
user's model (``ORIGINAL``) from the compressed copies.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

CONFTEST = textwrap.dedent(
    """
    import collections

    import pytest
    import torch
    from torch import nn

    torch.set_num_threads(1)
    CALLS = collections.Counter()
    ORIGINAL = []


    class Counted(nn.Sequential):
        def forward(self, x):
            CALLS[id(self)] += 1
            return super().forward(x)


    def make_model():
        torch.manual_seed(0)
        return Counted(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 4))


    def make_data(model, batches=4, size=64, seed=1):
        generator = torch.Generator().manual_seed(seed)
        x = torch.randn(batches * size, 16, generator=generator)
        with torch.no_grad():
            y = model(x).argmax(1)
        CALLS.clear()
        return [(x[i:i + size], y[i:i + size]) for i in range(0, len(x), size)]


    @pytest.fixture(scope="session")
    def compress_model():
        model = make_model()
        ORIGINAL.append(model)
        return model


    @pytest.fixture(scope="session")
    def compress_data(compress_model):
        return make_data(compress_model)


    @pytest.fixture
    def forward_calls():
        return CALLS
    """
)


# A plain seeded MLP labelled by itself (100 % float accuracy), with no counting wrapper:
# the projects that deploy it (runtimes, compressors) need a model torch.export traces.
PLAIN_CONFTEST = textwrap.dedent(
    """
    import pytest
    import torch
    from torch import nn

    torch.set_num_threads(1)


    def make_model():
        torch.manual_seed(0)
        return nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 4)).eval()


    def make_data(model):
        generator = torch.Generator().manual_seed(1)
        x = torch.randn(256, 16, generator=generator)
        with torch.no_grad():
            y = model(x).argmax(1)
        return [(x[i:i + 64], y[i:i + 64]) for i in range(0, 256, 64)]


    @pytest.fixture(scope="session")
    def compress_model():
        return make_model()


    @pytest.fixture(scope="session")
    def compress_data(compress_model):
        return make_data(compress_model)
    """
)


def make_project(pytester: pytest.Pytester, tests: str, *, conftest_extra: str = "") -> None:
    """The conftest above (plus ``conftest_extra``) and ``tests`` as test_project.py."""
    pytester.makeconftest(CONFTEST + textwrap.dedent(conftest_extra))
    pytester.makepyfile(test_project=textwrap.dedent(tests))


def measure_recipe(**recipe: Any) -> dict[str, float]:
    """The sizes and sparsity the plugin must report for the project's model and ``recipe``."""
    from pytest_compress.engine.apply import compress_model
    from pytest_compress.engine.measure import model_size, sparsity
    from pytest_compress.fileformat.container import compressed_size

    namespace: dict[str, Any] = {}
    exec(CONFTEST, namespace)  # the very model the project's conftest builds
    model = namespace["make_model"]()
    compressed = compress_model(model, **recipe)
    return {
        "float_size": model_size(model),
        "compressed_size": compressed_size(compressed),
        "size_ratio": compressed_size(compressed) / model_size(model),
        "sparsity": sparsity(compressed).overall,
    }


def read_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


def run_subprocess(path: Path, *args: str, timeout: float = 300) -> pytest.RunResult:
    """``pytest *args`` in a fresh process in ``path``, as ``Pytester.runpytest_subprocess``.

    For sessions a module shares (a module-scoped fixture cannot use the function-scoped
    ``pytester``). The environment is ours without pytest's and xdist's variables (this
    suite may itself run under xdist) and without a GitHub step summary.
    """
    environment = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith("PYTEST_") and name != "GITHUB_STEP_SUMMARY"
    }
    environment["OMP_NUM_THREADS"] = "1"
    environment["COLUMNS"] = "240"  # whole report rows (the width is tested apart)
    # The projects use no Hypothesis: its plugin would cost each process (a controller,
    # each xdist worker) most of a second of imports.
    command = [sys.executable, "-m", "pytest", "-p", "no:hypothesispytest", *args]
    start = time.monotonic()
    done = subprocess.run(
        command, cwd=path, env=environment, capture_output=True, text=True, timeout=timeout
    )
    seconds = time.monotonic() - start
    return pytest.RunResult(
        done.returncode, done.stdout.splitlines(), done.stderr.splitlines(), seconds
    )
