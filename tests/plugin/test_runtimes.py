"""runtime=: the recipe deployed on ONNX Runtime or torchao and judged as shipped, through
the marker the way a user writes it.

Each deployed metric is checked against an independent computation: the runtime's own
tools applied by hand to the same model (``deploy_onnx`` / ``deploy_torchao`` on a fresh
model, evaluated with a plain loop), not the plugin's reading of it.
"""

from __future__ import annotations

import dataclasses
import json
import textwrap

import pytest

from pytest_compress.checks.result import CompressionResult
from pytest_compress.runtimes.latency import LatencyMeasurement
from tests.plugin_projects import PLAIN_CONFTEST, read_json, run_subprocess

CONFTEST = PLAIN_CONFTEST

TESTS = """
import pytest

@pytest.mark.compress(quantize="int8", runtime="onnxruntime", max_accuracy_drop=0.5)
def test_onnx_int8(): pass

@pytest.mark.compress(quantize="w8a8", runtime="onnxruntime", max_accuracy_drop=0.5)
def test_onnx_w8a8(): pass

@pytest.mark.compress(quantize="int8", runtime="torchao", max_accuracy_drop=0.5)
def test_torchao_int8(): pass

@pytest.mark.compress(quantize="w8a8-dynamic", runtime="torchao", max_accuracy_drop=0.5)
def test_torchao_w8a8(): pass
"""


def project(pytester: pytest.Pytester, tests: str = TESTS) -> None:
    pytester.makeconftest(textwrap.dedent(CONFTEST))
    pytester.makepyfile(test_project=textwrap.dedent(tests))


def by_test(pytester: pytest.Pytester) -> dict[str, dict]:
    report = read_json(pytester.path / "report.json")
    return {entry["check"].split("::")[1]: entry for entry in report["checks"]}


def by_hand(runtime: str, recipe: str, tmp_path) -> tuple[float, int]:
    """Top-1 accuracy and artifact bytes of the project's model deployed with the
    runtime's own entry point, evaluated with a plain loop."""
    from pytest_compress.engine.specs import as_quant_spec

    namespace: dict = {}
    exec(CONFTEST, namespace)
    model = namespace["make_model"]()
    data = namespace["make_data"](model)
    quant = as_quant_spec(recipe)
    if runtime == "onnxruntime":
        from pytest_compress.runtimes.onnx_backend import deploy_onnx

        calibration = data if quant.needs_calibration else None
        deployed = deploy_onnx(model, quant, None, data[0][0], calibration, tmp_path)
    else:
        from pytest_compress.runtimes.torchao_backend import deploy_torchao

        deployed = deploy_torchao(model, quant, None, tmp_path)
    right = sum(int((deployed.predict(x).argmax(1) == y).sum()) for x, y in data)
    return right / 256, deployed.size_bytes


@pytest.mark.parametrize(
    ("test", "runtime", "recipe"),
    [
        ("test_onnx_int8", "onnxruntime", "int8"),
        ("test_onnx_w8a8", "onnxruntime", "w8a8"),
        ("test_torchao_int8", "torchao", "int8"),
        ("test_torchao_w8a8", "torchao", "w8a8-dynamic"),
    ],
)
def test_every_runtime_reports_what_its_own_tools_give(
    deployed_suite, tmp_path, test, runtime, recipe
) -> None:
    entry = deployed_suite[test]
    accuracy, size = by_hand(runtime, recipe, tmp_path)
    assert entry["runtime"] == runtime
    assert entry["compressed_metric"] == pytest.approx(accuracy, abs=1e-12)
    assert entry["compressed_size"] == size
    assert entry["fidelity_gap"] == pytest.approx(
        abs(entry["compressed_metric"] - entry["simulated_metric"]), abs=1e-12
    )
    assert entry["simulated_size"] > 0 and entry["saved_as"]
    assert entry["latency"] is None  # no latency budget: not timed


@pytest.fixture(scope="module")
def deployed_suite(tmp_path_factory) -> dict[str, dict]:
    """The four deployed checks, run once through pytest in a subprocess."""
    from tests.plugin_projects import run_subprocess

    folder = tmp_path_factory.mktemp("deployed")
    (folder / "conftest.py").write_text(textwrap.dedent(CONFTEST))
    (folder / "test_project.py").write_text(textwrap.dedent(TESTS))
    result = run_subprocess(folder, "--compress-report=report.json", "-p", "no:cacheprovider")
    assert result.ret == 0, result.stdout.str()
    report = json.loads((folder / "report.json").read_text())
    return {entry["check"].split("::")[1]: entry for entry in report["checks"]}


LATENCY_TESTS = """
import pytest

@pytest.mark.compress(quantize="int8", runtime="onnxruntime", max_latency_ratio=100)
def test_generous(): pass

@pytest.mark.compress(quantize="int8", runtime="onnxruntime", max_latency_ratio=0.001)
def test_impossible(): pass
"""


def test_latency_budgets_pass_and_fail_and_are_timed_again_on_a_cached_run(tmp_path) -> None:
    from tests.plugin_projects import run_subprocess

    (tmp_path / "conftest.py").write_text(textwrap.dedent(CONFTEST))
    (tmp_path / "test_project.py").write_text(textwrap.dedent(LATENCY_TESTS))
    args = ("--compress-report=report.json", "--compress-latency-seconds=0.5")
    runs, exported = [], []
    for _ in range(2):
        result = run_subprocess(tmp_path, *args)
        folder = tmp_path / ".pytest_cache" / "d" / "pytest-compress-exports"
        exported.append({path.name: path.stat().st_mtime_ns for path in folder.glob("*.onnx")})
        assert result.ret == 1, result.stdout.str()
        result.assert_outcomes(passed=1, failed=1)
        report = json.loads((tmp_path / "report.json").read_text())
        runs.append({entry["check"].split("::")[1]: entry for entry in report["checks"]})
    first, second = runs
    # one export of the float model, made by the first run, reused by both checks and the
    # second run (its key: the model's fingerprint, the pruning, the input signature)
    assert len(exported[0]) == 1 and exported[1] == exported[0]
    for entry in (*first.values(), *second.values()):
        timed = entry["latency"]
        assert timed["rounds"] >= 5 and timed["low"] <= timed["ratio"] <= timed["high"]
        assert timed["float_ms"] > 0 and timed["compressed_ms"] > 0
    assert first["test_generous"]["passed"] and not first["test_impossible"]["passed"]
    assert [v["budget"] for v in first["test_impossible"]["violations"]] == ["max_latency_ratio"]
    # the second run serves the metric and the size from the cache, and times again
    assert not first["test_generous"]["cached"] and second["test_generous"]["cached"]
    assert (
        second["test_generous"]["compressed_metric"] == first["test_generous"]["compressed_metric"]
    )
    assert second["test_generous"]["timings"]["latency"] > 0
    assert (
        "deploy" not in second["test_impossible"]["timings"] or second["test_impossible"]["latency"]
    )
    text = result.stdout.str()
    assert "the whole interval lies above 0.001 allowed" in text
    assert "deployed on onnxruntime: ONNX file" in text


def noisy_result(ok_median: bool) -> CompressionResult:
    from pytest_compress.budgets import Budgets

    timed = LatencyMeasurement(
        float_ms=1.0,
        compressed_ms=0.9 if ok_median else 1.1,
        ratio=0.9 if ok_median else 1.1,
        low=0.7,
        high=1.3,
        rounds=40,
        seconds=3.0,
        capped=True,
    )
    return CompressionResult(
        float_metric=0.9,
        compressed_metric=0.89,
        accuracy_drop=0.01,
        relative_drop=0.01 / 0.9,
        float_size=1000,
        compressed_size=300,
        size_ratio=0.3,
        sparsity=0.0,
        recipe="int8 per-channel",
        budgets=Budgets(max_latency_ratio=1.0),
        runtime="onnxruntime",
        simulated_metric=0.89,
        simulated_size=320,
        saved_as="ONNX file 300 B",
        latency_measured=timed,
    ).judged()


@pytest.mark.parametrize("ok_median", [True, False])
def test_an_interval_that_straddles_the_budget_at_the_cap_is_judged_on_the_median(ok_median):
    result = noisy_result(ok_median)
    assert result.noisy and result.passed is ok_median
    text = result.explain()
    assert "the measurement was noisy: the interval straddles the budget" in text
    assert "--compress-latency-seconds" in text
    assert ("budget 1.00: ok" in text) is ok_median


def test_a_tight_interval_above_the_budget_fails_without_noise() -> None:
    result = noisy_result(False)
    clear = LatencyMeasurement(1.0, 1.5, 1.5, 1.45, 1.55, 20, 1.0, capped=False)
    result = dataclasses.replace(result, latency_measured=clear).judged()
    assert not result.passed and not result.noisy
    assert "the whole interval lies above 1.00 allowed" in result.explain()


@pytest.mark.parametrize(
    ("arguments", "expected"),
    [
        (
            'quantize="int8", runtime="tensorrt", max_accuracy_drop=0.1',
            "*runtime: runtime must be one of ('simulate', 'torchao', 'onnxruntime'), "
            "got 'tensorrt'*",
        ),
        (
            'quantize="int3", runtime="onnxruntime", max_accuracy_drop=0.1',
            "*runtime: runtime='onnxruntime' cannot run 'int3'; it supports*",
        ),
        (
            'quantize="int8", prune=PruneSpec(activation_threshold=0.1), runtime="torchao", '
            "max_accuracy_drop=0.1",
            "*cannot prune activations at run time*",
        ),
        (
            'quantize="int8", max_latency_ratio=0.8',
            '*max_latency_ratio: limits the deployed model*add runtime="onnxruntime"*',
        ),
        ('quantize="int8", max_fidelity_gap=0.01', "*max_fidelity_gap: limits the deployed model*"),
        (
            'quantize="int8", runtime="onnxruntime", search="sparsity", max_accuracy_drop=0.1',
            "*deploys one fixed recipe*",
        ),
        (
            'quantize="int8", runtime="torchao", keep_float="auto", max_accuracy_drop=0.1',
            "*deploys one fixed recipe*",
        ),
        (
            'quantize="int8", runtime="onnxruntime", max_latency="fast"',
            "*max_latency: must be a number of seconds*",
        ),
        (
            'quantize="int8", runtime="onnxruntime", max_latency_ratio=0',
            "*max_latency_ratio: must be more than 0*",
        ),
    ],
)
def test_a_runtime_check_that_cannot_run_is_a_usage_error_at_collection(
    pytester: pytest.Pytester, arguments: str, expected: str
) -> None:
    project(
        pytester,
        f"""
        import pytest
        from pytest_compress import PruneSpec

        @pytest.mark.compress({arguments})
        def test_check(): pass
        """,
    )
    result = pytester.runpytest("-p", "no:cacheprovider")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"*test_project.py::test_check: *{expected.lstrip('*')}"])


def test_a_missing_extra_is_a_usage_error_naming_it(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pytest_compress.runtimes import registry

    real = registry._find_spec
    monkeypatch.setattr(
        registry, "_find_spec", lambda name: None if name == "onnxruntime" else real(name)
    )
    project(
        pytester,
        """
        import pytest

        @pytest.mark.compress(quantize="int8", runtime="onnxruntime", max_accuracy_drop=0.1)
        def test_check(): pass
        """,
    )
    result = pytester.runpytest("-p", "no:cacheprovider")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        ["*runtime 'onnxruntime' needs `pip install \"pytest-compress[[]onnx]\"`*"]
    )


def test_the_baseline_records_the_latency_ratio_and_gates_it_on_the_interval(tmp_path) -> None:
    from pytest_compress.plugin.baseline import Baseline, baseline_entry, write_baseline

    recorded = noisy_result(True)  # ratio 0.9, interval 0.7-1.3
    entry = {**recorded.to_dict(), "check": "t.py::test_x", "test": "t.py::test_x"}
    assert baseline_entry(entry)["latency_ratio"] == 0.9
    path = tmp_path / "baseline.json"
    write_baseline(path, {"t.py::test_x": baseline_entry(entry)})
    baseline = Baseline.load(path)

    def gate(low: float, ratio: float, tolerance: float = 0.25):
        timed = LatencyMeasurement(1.0, ratio, ratio, low, ratio * 1.02, 30, 1.0, False)
        result = dataclasses.replace(recorded, latency_measured=timed)
        checks = baseline.compare("t.py::test_x", result, 0.005, tolerance)
        return next(c for c in checks if c.budget == "baseline_latency")

    assert gate(low=1.0, ratio=1.05).ok  # within 0.9 * 1.25 = 1.125
    assert gate(low=1.12, ratio=1.3).ok  # the interval still reaches the limit
    slower = gate(low=1.2, ratio=1.3)  # the whole interval above it: regressed
    assert not slower.ok and slower.limit == pytest.approx(1.125)
    assert not gate(low=1.0, ratio=1.05, tolerance=0.05).ok
    text = dataclasses.replace(recorded, checks=(slower,)).explain()
    assert (
        "regressed vs baseline: latency ratio 1.30 (its whole interval) above baseline 0.90" in text
    )


def test_xdist_reports_the_deployed_checks_as_a_serial_run_does(deployed_suite, tmp_path) -> None:
    from tests.plugin_projects import run_subprocess

    (tmp_path / "conftest.py").write_text(textwrap.dedent(CONFTEST))
    (tmp_path / "test_project.py").write_text(textwrap.dedent(TESTS))
    result = run_subprocess(tmp_path, "-n", "2", "--compress-report=report.json")
    assert result.ret == 0, result.stdout.str()
    report = json.loads((tmp_path / "report.json").read_text())
    parallel = {entry["check"].split("::")[1]: entry for entry in report["checks"]}
    fields = ("runtime", "compressed_metric", "compressed_size", "simulated_metric",
              "simulated_size", "fidelity_gap", "saved_as", "passed")  # fmt: skip
    assert sorted(parallel) == sorted(deployed_suite)
    for test, entry in parallel.items():
        assert {f: entry[f] for f in fields} == {f: deployed_suite[test][f] for f in fields}


NOISY_CONFTEST = """

from pytest_compress.checks import deploy
from pytest_compress.runtimes.latency import LatencyMeasurement


def _straddling(float_call, compressed_call, batches, **options):
    # a machine too noisy to tell: the interval straddles the budget when time runs out
    return LatencyMeasurement(0.5, 0.55, 1.1, 0.8, 1.4, 60, options["max_seconds"], True)


deploy.measure_latency_ratio = _straddling
"""


def test_a_noisy_latency_is_judged_on_its_median_and_says_so(pytester) -> None:
    project(
        pytester,
        """
        import pytest

        @pytest.mark.compress(quantize="int8", runtime="torchao", max_latency_ratio=1.0)
        def test_slower(): pass

        @pytest.mark.compress(quantize="int8", runtime="torchao", max_latency_ratio=1.2)
        def test_within(): pass
        """,
    )
    conftest = pytester.path / "conftest.py"
    conftest.write_text(conftest.read_text() + NOISY_CONFTEST)
    # in a process of its own: the patch must reach the very module the runner calls, which
    # an in-process run shares with (and, after an earlier run, may not share with) others
    result = run_subprocess(
        pytester.path,
        "-p", "no:cacheprovider", "--compress-report=report.json", "--compress-latency-seconds=2",
    )  # fmt: skip
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(
        [
            "*latency 0.5 ms -> 0.55 ms per batch: ratio 1.10 (95% interval 0.80-1.40, 60 rounds "
            "in 2.0 s), budget 1.00: median 1.10 > 1.00, but the measurement was noisy*"
            "--compress-latency-seconds*",
        ]
    )
    entries = by_test(pytester)
    assert entries["test_within"]["latency"]["noisy"] and entries["test_within"]["passed"]
    assert entries["test_slower"]["latency"]["noisy"] and not entries["test_slower"]["passed"]
    result.stdout.fnmatch_lines(["*int8 per-channel [[]torchao; latency 1.10x[]]*"])
