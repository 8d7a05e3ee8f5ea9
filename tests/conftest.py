"""The suite's shared setup: one torch thread per process, Hypothesis profiles, pytester.

The plugin is off in this outer run (``-p no:compress`` in pyproject's addopts): the
pytest-free layers are tested without it, and the plugin only through ``pytester``. An
inner session starts a fresh plugin manager that reads its own (empty) command line and
the ini file of its tmp folder, not ours, so it loads the ``compress`` entry point like a
user's run does; this holds for ``runpytest_subprocess`` and the in-process
``runpytest`` alike (``tests/plugin/test_loading.py`` checks both), so no
``-p pytest_compress.plugin`` is needed or wanted.

Threads: two xdist workers on a small machine, each with torch's default thread pool
(one thread per core), oversubscribe the cores several times over. Every worker, and
every pytester subprocess (``OMP_NUM_THREADS`` is inherited; the generated conftests
also call ``torch.set_num_threads(1)``), runs torch on one thread.
"""

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # before torch starts its pool; inherited

import pytest  # noqa: E402
import torch  # noqa: E402
from hypothesis import HealthCheck, settings  # noqa: E402

torch.set_num_threads(1)
torch.set_num_interop_threads(1)

pytest_plugins = ["pytester"]

settings.register_profile(
    "ci",
    deadline=None,
    derandomize=True,
    database=None,
    max_examples=100,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile("dev", deadline=None, max_examples=30)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

torch.manual_seed(0)


class _SubclassProbe(torch.Tensor):
    """The smallest ``__torch_dispatch__`` tensor subclass, dispatched once below."""

    @staticmethod
    def __new__(cls):  # noqa: D102
        return torch.Tensor._make_wrapper_subclass(cls, (1,))

    __torch_function__ = torch._C._disabled_torch_function_impl

    @classmethod
    def __torch_dispatch__(cls, func, types, args=(), kwargs=None):  # noqa: D105
        return torch.zeros(1)


# The first operation on a tensor subclass (the low-memory mode's weights, which every
# failing check's per-layer sensitivity uses too) imports torch.distributed.tensor and
# sympy, hundreds of modules. pytester's in-process runs forget the modules imported
# during a run, and importing these again registers torch libraries twice (a
# RuntimeError in the next test that needs them): they are imported here, outside any run.
_SubclassProbe().detach()


# The modules whose tests read whole rows of the terminal report.
WIDE_TERMINAL = {
    f"tests.{name}"
    for name in (
        "plugin.test_options",
        "plugin.test_marker",
        "plugin.test_fixture",
        "plugin.test_cache",
        "plugin.test_adjust",
        "plugin.test_baseline",
        "faults.test_stale_cache",
    )
}


@pytest.fixture(autouse=True)
def _wide_terminal(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """Inner runs of WIDE_TERMINAL's tests report as on a wide terminal, so they read
    whole rows (a narrow one shortens them: tests/plugin/test_reports.py). Not every
    test: others read pytest's own lines as an 80-column terminal cuts them."""
    if request.module.__name__ in WIDE_TERMINAL:
        monkeypatch.setenv("COLUMNS", "240")
