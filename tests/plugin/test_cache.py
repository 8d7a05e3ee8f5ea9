"""Shared evaluation data and the persistent result cache, through pytester: counted work.

The project below counts what the plugin makes it do: every forward pass (per model
object: the user's float model, and each compressed copy) and every sample its dataset
decodes. Its session writes the counts to ``counts-<worker>.json``; the tests compare
them run after run. Each pytester test has its own folder, so its own pytest cache.
"""

from __future__ import annotations

import importlib
import json
import sys
import textwrap

import pytest

from tests.plugin_projects import read_json

BATCHES = 4  # compress_data: 128 samples in batches of 32
SAMPLES = 128
CALIBRATION_BATCHES = 2

CONFTEST = """
import collections
import json
import pathlib

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

torch.set_num_threads(1)
SETTINGS = json.loads(pathlib.Path("settings.json").read_text())
FORWARDS = []  # every model whose forward ran, one entry per call (keeps ids unique)
DECODED = collections.Counter()
ORIGINAL = []
SCALE = SETTINGS.get("metric_scale", 1)  # read by the metric: a change of the metric


class Counted(nn.Sequential):
    def forward(self, x):
        FORWARDS.append(self)
        return super().forward(x)


class Samples(Dataset):
    \"\"\"A dataset that counts what it decodes (a DataLoader asks once per sample).\"\"\"

    def __init__(self, inputs, targets):
        self.inputs, self.targets = inputs, targets

    def __len__(self):
        return len(self.inputs)

    def __getitem__(self, index):
        DECODED["samples"] += 1
        return self.inputs[index], self.targets[index]


@pytest.fixture(scope="session")
def compress_model():
    torch.manual_seed(0)
    model = Counted(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))
    with torch.no_grad():
        model[0].weight[0, 0] += SETTINGS.get("weight", 0.0)
    ORIGINAL.append(model)
    return model


@pytest.fixture(scope="session")
def compress_data():
    generator = torch.Generator().manual_seed(1)
    inputs = torch.randn(128, 16, generator=generator)
    inputs[5, 3] += SETTINGS.get("data", 0.0)
    targets = torch.randint(0, 4, (128,), generator=generator)
    return DataLoader(Samples(inputs, targets), batch_size=32)


@pytest.fixture(scope="session")
def compress_calibration_data():
    generator = torch.Generator().manual_seed(2)
    inputs = torch.randn(64, 16, generator=generator) + SETTINGS.get("calibration", 0.0)
    return [inputs[:32], inputs[32:]]


if SETTINGS.get("metric"):
    def scaled_accuracy(outputs, targets):
        return (outputs.argmax(1) == targets).sum() * SCALE, len(targets)

    @pytest.fixture(scope="session")
    def compress_metric():
        return scaled_accuracy


def pytest_sessionfinish(session):
    per_model = collections.Counter(id(model) for model in FORWARDS)
    counts = {
        "float": per_model.pop(id(ORIGINAL[0]), 0) if ORIGINAL else 0,
        "copies": sorted(per_model.values()),
        "decoded": DECODED["samples"],
    }
    # this session's own worker id (not the environment's: the tests may run under xdist)
    worker = getattr(session.config, "workerinput", {}).get("workerid", "main")
    pathlib.Path(f"counts-{worker}.json").write_text(json.dumps(counts))
"""

# K = 4 checks: two markers, one activation recipe (it calibrates), one callable.
CHECKS = """
import pytest

@pytest.mark.compress(quantize="int8", max_accuracy_drop=0.99)
def test_int8():
    pass

@pytest.mark.compress(quantize="int4", prune=0.5, max_accuracy_drop=0.99)
def test_int4_pruned():
    pass

@pytest.mark.compress(quantize="w8a8", max_accuracy_drop=0.99)
def test_w8a8():
    pass

def test_callable(compress):
    compress(prune=0.8, max_accuracy_drop=0.99)
"""
# What a full measurement costs: the float model once per batch, each copy once per
# batch, and the w8a8 copy also once per calibration batch (calibrating is compressing).
MEASURED_ALL = {
    "float": BATCHES,
    "copies": sorted([BATCHES] * 3 + [BATCHES + CALIBRATION_BATCHES]),
    "decoded": SAMPLES,
}
NOTHING = {"float": 0, "copies": [], "decoded": SAMPLES}  # the data is still read once


@pytest.fixture(autouse=True)
def _fresh_sources(monkeypatch):
    # The tests rewrite test files within a second, at times to the same size: without
    # bytecode files, pytest always compiles the current source.
    monkeypatch.setattr(sys, "dont_write_bytecode", True)
    monkeypatch.delenv("GITHUB_STEP_SUMMARY", raising=False)


def make(pytester: pytest.Pytester, checks: str = CHECKS, **settings: object) -> None:
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(test_project=textwrap.dedent(checks))
    configure(pytester, **settings)


def configure(pytester: pytest.Pytester, **settings: object) -> None:
    (pytester.path / "settings.json").write_text(json.dumps(settings))


def run(pytester: pytest.Pytester, *args: str, passed: int = 4) -> pytest.RunResult:
    # The changes below move some metrics: rewrite the baseline rather than gate on it.
    result = pytester.runpytest(
        "--compress-baseline=baseline.json", "--compress-update-baseline", *args
    )
    result.assert_outcomes(passed=passed)
    return result


def counts(pytester: pytest.Pytester, worker: str = "main") -> dict:
    return read_json(pytester.path / f"counts-{worker}.json")


def cached_rows(result: pytest.RunResult) -> list[str]:
    return [line.split()[0] for line in result.stdout.lines if line.endswith("(cached)")]


def test_k_checks_read_the_data_once_and_run_each_model_once_per_batch(pytester):
    make(pytester)
    run(pytester)
    assert counts(pytester) == MEASURED_ALL


def test_a_rerun_with_nothing_changed_runs_no_forward_pass(pytester):
    make(pytester)
    first = run(pytester, "--compress-report=first.json")
    assert cached_rows(first) == []
    second = run(pytester, "--compress-report=second.json", "--compress-markdown=second.md")
    assert counts(pytester) == NOTHING
    assert len(cached_rows(second)) == 4
    second.stdout.fnmatch_lines(
        [
            "test_project.py::test_int8 * int8 per-channel * ok (cached)",
            "cache: 4 of 4 checks reused from an earlier run*",
        ]
    )
    # the same numbers as the run that measured them, marked cached in every report
    measured, cached = (
        read_json(pytester.path / "first.json"),
        read_json(pytester.path / "second.json"),
    )
    for before, after in zip(measured["checks"], cached["checks"], strict=True):
        assert (before["cached"], after["cached"]) == (False, True)
        for key in ("float_metric", "compressed_metric", "float_size", "compressed_size",
                    "sparsity", "size_ratio", "accuracy_drop", "passed"):  # fmt: skip
            assert after[key] == before[key], key
    assert cached["notes"][0].startswith("cache: 4 of 4 checks reused from an earlier run")
    markdown = (pytester.path / "second.md").read_text()
    assert markdown.count("| ok (cached) |") == 4
    assert "\n- cache: 4 of 4 checks reused from an earlier run" in markdown


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        # one weight: the float model and every check of it
        ({"weight": 1e-3}, MEASURED_ALL),
        # one data value: everything measured on that data
        ({"data": 1e-3}, MEASURED_ALL),
        # the metric: everything measured with it
        ({"metric": True, "metric_scale": 2}, MEASURED_ALL),
        # the calibration data: only the recipe that calibrates on it
        ({"calibration": 0.5}, {**NOTHING, "copies": [BATCHES + CALIBRATION_BATCHES]}),
    ],
    ids=["one-weight", "one-data-value", "metric", "calibration-data"],
)
def test_a_change_measures_again_exactly_what_it_affects(pytester, change, expected):
    make(pytester)
    run(pytester)
    configure(pytester, **change)
    run(pytester)
    assert counts(pytester) == expected
    run(pytester)  # and the new measurements are cached in turn
    assert counts(pytester) == NOTHING


def test_a_metric_whose_code_reads_a_changed_constant_is_measured_again(pytester):
    make(pytester, metric=True)
    run(pytester, "--compress-report=before.json")
    configure(pytester, metric=True, metric_scale=3)  # the same function, another SCALE
    run(pytester, "--compress-report=after.json")
    assert counts(pytester) == MEASURED_ALL
    before, after = (
        read_json(pytester.path / name)["checks"] for name in ("before.json", "after.json")
    )
    assert [c["float_metric"] * 3 for c in before] == pytest.approx(
        [c["float_metric"] for c in after]
    )


def test_a_changed_recipe_measures_only_that_check(pytester):
    make(pytester)
    run(pytester)
    pytester.makepyfile(test_project=textwrap.dedent(CHECKS.replace('"int8"', '"int6"')))
    result = run(pytester)
    # the float model's numbers are still cached: only the one new copy runs
    assert counts(pytester) == {**NOTHING, "copies": [BATCHES]}
    assert sorted(cached_rows(result)) == [
        "test_project.py::test_callable",
        "test_project.py::test_int4_pruned",
        "test_project.py::test_w8a8",
    ]
    result.stdout.fnmatch_lines(["test_project.py::test_int8 * int6 per-channel * ok"])


def test_budgets_are_checked_again_on_cached_numbers(pytester):
    make(pytester)
    run(pytester)
    loose = 'quantize="int8", max_accuracy_drop=0.99'
    tight = CHECKS.replace(loose, 'quantize="int8", max_size=10')
    pytester.makepyfile(test_project=textwrap.dedent(tight))
    result = pytester.runpytest("--compress-baseline=baseline.json")
    result.assert_outcomes(passed=3, failed=1)
    assert counts(pytester) == NOTHING
    result.stdout.fnmatch_lines(
        [
            "compression budget exceeded for int8 per-channel:",
            "  compressed size * > 10 B allowed",
            "  model compress_model, data compress_data, device cpu (measured by an earlier "
            "run: pytest-compress cache)",
        ]
    )
    result.stdout.fnmatch_lines(["test_project.py::test_int8 * FAILED (cached)"])


def test_the_baseline_gate_holds_for_cached_numbers(pytester):
    make(pytester)
    run(pytester)  # records baseline.json
    baseline = read_json(pytester.path / "baseline.json")
    baseline["checks"]["test_project.py::test_int8"]["compressed_metric"] += 0.5
    (pytester.path / "baseline.json").write_text(json.dumps(baseline))
    result = pytester.runpytest("--compress-baseline=baseline.json")
    result.assert_outcomes(passed=3, failed=1)
    assert counts(pytester) == NOTHING
    result.stdout.fnmatch_lines(
        ["test_project.py::test_int8 * REGRESSED (cached)", "*1 regressed*"]
    )


def test_a_corrupted_cache_entry_is_measured_again_and_rewritten(pytester):
    make(pytester)
    run(pytester)
    entries = sorted((pytester.path / ".pytest_cache" / "v" / "pytest-compress").rglob("*"))
    files = [path for path in entries if path.is_file()]
    assert len(files) == 1 + 4  # the float reference and each check
    garbage = ["{not json", "[]", '{"float_metric": "x"}', "", '{"metric": 1.0}']
    for path, text in zip(files, garbage, strict=True):
        path.write_text(text)
    result = run(pytester)
    assert counts(pytester) == MEASURED_ALL
    assert cached_rows(result) == []
    assert "warning" not in result.stdout.str().lower()
    run(pytester)
    assert counts(pytester) == NOTHING


@pytest.mark.parametrize("bypass", [["--compress-no-cache"], ["-p", "no:cacheprovider"]])
def test_the_cache_can_be_bypassed(pytester, bypass):
    make(pytester)
    run(pytester)
    result = run(pytester, *bypass)
    assert counts(pytester) == MEASURED_ALL
    assert cached_rows(result) == []


def test_no_cache_measures_everything_and_refreshes_the_stored_results(pytester):
    make(pytester)
    run(pytester, "--compress-no-cache")
    run(pytester, "--compress-no-cache")
    assert counts(pytester) == MEASURED_ALL
    run(pytester)
    assert counts(pytester) == NOTHING


def test_no_cacheprovider_stores_nothing(pytester):
    make(pytester)
    run(pytester, "-p", "no:cacheprovider")
    assert not (pytester.path / ".pytest_cache").exists()


def test_data_larger_than_the_limit_is_streamed_and_the_report_says_so(pytester):
    make(pytester)
    result = run(
        pytester,
        "--compress-cache-mb=0",
        "--compress-report=report.json",
        "--compress-markdown=report.md",
    )
    # read once to fingerprint it, then once per evaluation (float + 4 checks)
    assert counts(pytester)["decoded"] == SAMPLES * (1 + 1 + 4)
    note = (
        "data compress_data (9.2 kB) is larger than --compress-cache-mb=0: streamed, so every "
        "evaluation reads it again"
    )
    result.stdout.fnmatch_lines([note])
    assert note in read_json(pytester.path / "report.json")["notes"]
    assert f"- {note}" in (pytester.path / "report.md").read_text().splitlines()
    without_cache = run(pytester, "--compress-cache-mb=0", "-p", "no:cacheprovider")
    # no fingerprint to compute: the first batch showed the data is too large, so stop
    assert counts(pytester)["decoded"] == 32 + SAMPLES * (1 + 4)
    without_cache.stdout.fnmatch_lines(
        ["data compress_data (more than 2.3 kB) is larger than --compress-cache-mb=0: *"]
    )


def test_data_within_the_limit_is_kept(pytester):
    make(pytester)
    result = run(pytester, "--compress-cache-mb=0.05", "--compress-no-cache")
    assert counts(pytester)["decoded"] == SAMPLES
    result.stdout.no_fnmatch_line("*streamed*")


@pytest.mark.parametrize("value", ["-1", "lots", "inf"])
def test_a_bad_cache_size_is_a_usage_error(pytester, value):
    make(pytester)
    result = pytester.runpytest(f"--compress-cache-mb={value}")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--compress-cache-mb must be a non-negative number*"])


def test_the_options_are_ini_keys_too(pytester):
    make(pytester)
    pytester.makeini("[pytest]\ncompress-no-cache = true\ncompress_cache_mb = 0\n")
    run(pytester)
    result = run(pytester)
    assert counts(pytester)["decoded"] == SAMPLES * (1 + 1 + 4)  # streamed, not cached
    assert cached_rows(result) == []


def test_a_model_is_fingerprinted_once_per_session(pytester, monkeypatch):
    # sys.modules' copy of the module that calls it, the one the plugin imports
    inputs = importlib.import_module("pytest_compress.checks.inputs")
    calls = []
    original = inputs.model_fingerprint
    monkeypatch.setattr(
        inputs, "model_fingerprint", lambda model: calls.append(model) or original(model)
    )
    make(pytester)
    run(pytester)
    assert len(calls) == 1
    run(pytester)
    assert len(calls) == 2


def test_a_model_that_cannot_be_fingerprinted_is_measured_every_time(pytester):
    make(pytester)
    pytester.makeconftest(
        CONFTEST
        + textwrap.dedent(
            """
            import weakref

            @pytest.fixture(scope="session")
            def compress_model():
                torch.manual_seed(0)
                model = Counted(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))
                # what a weak reference points to is not read
                model[2].peer = weakref.ref(model[0])
                ORIGINAL.append(model)
                return model
            """
        )
    )
    run(pytester)
    result = run(pytester)
    assert counts(pytester) == MEASURED_ALL
    result.stdout.fnmatch_lines(
        [
            "not cached: model compress_model holds a weakref.ReferenceType (attribute "
            "2.peer), "
            "which cannot be fingerprinted; to cache it, hold plain data there (numbers, *) "
            "or nothing"
        ]
    )


# Two failing checks: one blamed layer by layer, one that keeps layers float from the same
# ranking. Cosine to the float outputs: int2 always costs some, so both always fail (this
# float model's accuracy on random labels rises under int2).
FAILING = """
import pytest

@pytest.mark.compress(quantize="int2", metric="cosine", max_accuracy_drop=0.0001)
def test_harsh():
    pass

@pytest.mark.compress(quantize="int3", metric="cosine", keep_float="auto",
                      max_accuracy_drop=0.0001)
def test_auto():
    pass
"""
# A built-in metric finds the output it reads on the float model's first batch, once per
# check and session, cached or not: that is all a fully served failing check runs.
PROBE = 1


def run_failing(pytester: pytest.Pytester, *args: str, failed: int = 2) -> pytest.RunResult:
    result = pytester.runpytest("--compress-report=report.json", *args)
    result.assert_outcomes(failed=failed)
    return result


def sensitivities(pytester: pytest.Pytester) -> list[dict]:
    return [c["sensitivity"] for c in read_json(pytester.path / "report.json")["checks"]]


def test_a_failing_checks_sensitivity_is_cached_and_a_rerun_evaluates_nothing(pytester):
    make(pytester, FAILING)
    run_failing(pytester)
    first = counts(pytester)
    # the proxy's pass of the float model, and the layers measured alone: work to save
    assert first["float"] > BATCHES + 2 * PROBE and len(first["copies"]) > 2
    measured = sensitivities(pytester)
    again = run_failing(pytester)
    # no sensitivity (proxy pass or layer alone) and no keep_float step ran: all served
    assert counts(pytester) == {**NOTHING, "float": 2 * PROBE}
    assert sensitivities(pytester) == measured and measured[0]["evaluations"] == 2
    again.stdout.fnmatch_lines(["*most sensitive layers: * alone)*"])


def test_a_sensitivity_cut_short_by_its_time_budget_is_measured_again(pytester):
    make(pytester, FAILING.split('@pytest.mark.compress(quantize="int3"')[0])
    run_failing(pytester, "--compress-sensitivity-seconds=0", failed=1)
    for _ in range(2):
        result = run_failing(pytester, "--compress-sensitivity-seconds=0", failed=1)
        result.stdout.fnmatch_lines(["*stopped early by the time budget*"])
        # the check is served; the proxy's pass (two batches) and one layer alone ran again,
        # the latter compared with the float outputs (cosine), read once per session
        float_runs = PROBE + 2 + BATCHES
        assert counts(pytester) == {**NOTHING, "float": float_runs, "copies": [BATCHES]}
    run_failing(pytester, failed=1)  # complete this time: stored
    run_failing(pytester, failed=1)
    assert counts(pytester) == {**NOTHING, "float": PROBE}
    run_failing(pytester, "--compress-sensitivity-layers=1", failed=1)
    assert counts(pytester)["copies"] == [BATCHES]  # another cap, another entry
