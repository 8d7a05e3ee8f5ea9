"""Each command-line option and ini key of the plugin, through pytester."""

from __future__ import annotations

import platform
import xml.etree.ElementTree as ET

import pytest
import torch

from tests.plugin_projects import make_project, measure_recipe, read_json

TWO_CHECKS = """
import pytest

@pytest.mark.compress(quantize="int8", max_accuracy_drop=0.01, max_size_ratio=0.5)
def test_int8():
    pass

@pytest.mark.compress(quantize="int2", prune=0.8, max_accuracy_drop=0.01)
def test_harsh():
    pass
"""


@pytest.fixture(autouse=True)
def _no_step_summary(monkeypatch):
    # A CI runner sets it; the projects run here must not write to the real step summary.
    monkeypatch.delenv("GITHUB_STEP_SUMMARY", raising=False)


def test_json_report_schema(pytester):
    make_project(pytester, TWO_CHECKS)
    result = pytester.runpytest("--compress-report=out/report.json")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(["JSON report written to */out/report.json"])
    report = read_json(pytester.path / "out" / "report.json")
    assert report["schema_version"] == 1
    assert report["plugin"] == "pytest-compress"
    assert report["plugin_version"]
    assert report["torch_version"] == torch.__version__
    assert report["python_version"] == platform.python_version()
    assert {"system", "machine", "processor", "cpu_count", "device"} <= set(report["machine"])
    assert report["machine"]["device"] == "cpu"
    harsh, int8 = report["checks"]  # sorted by check id
    assert set(int8) >= {
        "check", "test", "model", "data", "recipe", "quantize", "prune", "metric",
        "float_metric", "compressed_metric", "accuracy_drop", "relative_drop", "float_size",
        "compressed_size", "size_ratio", "sparsity", "budgets", "violations", "passed",
        "seconds", "timings", "baseline",
    }  # fmt: skip
    exact = measure_recipe(quantize="int8")
    assert int8 == int8 | {
        "check": "test_project.py::test_int8",
        "test": "test_project.py::test_int8",
        "model": "compress_model",
        "data": "compress_data",
        "recipe": "int8 per-channel",
        "metric": "accuracy",
        "float_metric": 1.0,
        "float_size": exact["float_size"],
        "compressed_size": exact["compressed_size"],
        "size_ratio": exact["size_ratio"],
        "sparsity": exact["sparsity"],
        "budgets": {"max_accuracy_drop": 0.01, "max_size_ratio": 0.5},
        "violations": [],
        "passed": True,
    }
    assert int8["quantize"]["bits"] == 8 and int8["prune"] is None
    assert int8["seconds"] > 0
    assert harsh["passed"] is False
    (violation,) = harsh["violations"]
    assert violation["budget"] == "max_accuracy_drop"
    assert violation["limit"] == 0.01 and violation["actual"] > 0.01


def test_markdown_report_and_github_step_summary(pytester, monkeypatch):
    make_project(pytester, TWO_CHECKS)
    summary = pytester.path / "step_summary.md"
    summary.write_text("earlier step\n")
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    result = pytester.runpytest("--compress-markdown=report.md")
    result.assert_outcomes(passed=1, failed=1)
    table = (pytester.path / "report.md").read_text()
    lines = table.splitlines()
    assert lines[:4] == [
        "## compression report",
        "",
        "| test | recipe | metric | drop | size | ratio | sparsity | verdict |",
        "|---|---|---|---|---|---|---|---|",
    ]
    assert lines[4].startswith("| `test_project.py::test_harsh` | int2 per-channel + prune 80%")
    assert lines[4].endswith("| FAILED |")
    assert lines[5].startswith("| `test_project.py::test_int8` | int8 per-channel | 100.0% -> ")
    assert lines[5].endswith("| ok |")
    assert summary.read_text() == "earlier step\n" + table


def test_terminal_summary_shows_with_quiet_and_hides_on_request(pytester):
    make_project(pytester, TWO_CHECKS)
    quiet = pytester.runpytest("-q")
    quiet.stdout.fnmatch_lines(
        [
            "*= compression report =*",
            "test * recipe * metric * drop * size * ratio * sparsity * verdict",
            "test_project.py::test_harsh * 100.0% -> *% * pp * kB -> * B * 0.* * 80.0% * FAILED",
            "test_project.py::test_int8 * 100.0% -> 100.0% * 0.0 pp * ok",
        ]
    )
    hidden = pytester.runpytest("--compress-no-summary")
    hidden.assert_outcomes(passed=1, failed=1)
    hidden.stdout.no_fnmatch_line("*compression report*")


def test_no_checks_no_summary(pytester):
    make_project(pytester, "def test_plain():\n    pass\n")
    result = pytester.runpytest()
    result.assert_outcomes(passed=1)
    result.stdout.no_fnmatch_line("*compression report*")
    assert not (pytester.path / ".compress-baseline.json").exists()


def test_junit_xml_has_the_figures_and_the_failure_text(pytester):
    make_project(pytester, TWO_CHECKS)
    pytester.runpytest("--junitxml=junit.xml").assert_outcomes(passed=1, failed=1)
    cases = {
        case.get("name"): case for case in ET.parse(pytester.path / "junit.xml").iter("testcase")
    }
    properties = {p.get("name"): p.get("value") for p in cases["test_int8"].iter("property")}
    assert properties["compress_check"] == "test_project.py::test_int8"
    assert properties["compress_recipe"] == "int8 per-channel"
    assert properties["compress_float_metric"] == "1.0"
    assert properties["compress_passed"] == "True"
    assert (
        int(properties["compress_compressed_size"])
        == measure_recipe(quantize="int8")["compressed_size"]
    )
    failure = cases["test_harsh"].find("failure")
    assert failure.get("message").startswith("compression budget exceeded for int2 per-channel")
    assert "drop" in failure.get("message") and "> 1.0 pp allowed" in failure.text


def test_compress_disable_skips_marked_tests_and_the_callable(pytester):
    make_project(
        pytester,
        TWO_CHECKS
        + """
def test_callable(compress):
    compress(quantize="int8")

def test_plain():
    pass
""",
    )
    result = pytester.runpytest("--compress-disable", "-rs")
    result.assert_outcomes(passed=1, skipped=3)
    result.stdout.fnmatch_lines(
        ["SKIPPED [[]*[]] *: compression checks disabled by --compress-disable"]
    )
    result.stdout.no_fnmatch_line("*compression report*")


def test_compress_disable_still_validates_markers(pytester):
    make_project(
        pytester,
        """
        import pytest

        @pytest.mark.compress(quantize="int8")
        def test_no_budget():
            pass
        """,
    )
    result = pytester.runpytest("--compress-disable")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*test_no_budget: budget: none given*"])


@pytest.mark.parametrize(
    ("device", "message"),
    [
        ("tpu", "*--compress-device='tpu': expected cpu, cuda or cuda:N*"),
        ("cuda:x", "*expected cpu, cuda or cuda:N*"),
        pytest.param(
            "cuda",
            "*--compress-device=cuda: CUDA is not available on this machine*use *cpu",
            marks=pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA"),
        ),
        ("cuda:99", "*--compress-device=cuda:99: *"),
    ],
)
def test_compress_device_must_exist(pytester, device, message):
    make_project(pytester, TWO_CHECKS)
    result = pytester.runpytest(f"--compress-device={device}")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([message])


def test_ini_keys_and_the_command_line_wins(pytester):
    make_project(pytester, TWO_CHECKS)
    pytester.makeini(
        """
        [pytest]
        compress-report = from_ini.json
        compress-markdown = from_ini.md
        compress-no-summary = true
        """
    )
    from_ini = pytester.runpytest()
    from_ini.assert_outcomes(passed=1, failed=1)
    from_ini.stdout.no_fnmatch_line("*compression report*")
    assert read_json(pytester.path / "from_ini.json")["schema_version"] == 1
    assert (pytester.path / "from_ini.md").exists()
    (pytester.path / "from_ini.json").unlink()

    pytester.runpytest("--compress-report=from_cli.json")
    assert (pytester.path / "from_cli.json").exists()
    assert not (pytester.path / "from_ini.json").exists()


@pytest.mark.parametrize("key", ["compress-disable", "compress_disable"])
def test_ini_keys_take_dashes_or_underscores(pytester, key):
    make_project(pytester, TWO_CHECKS)
    pytester.makeini(f"[pytest]\n{key} = true\n")
    result = pytester.runpytest("-W", "error::pytest.PytestConfigWarning")
    result.assert_outcomes(skipped=2)


@pytest.mark.parametrize("tolerance", ["-0.1", "a lot", "inf"])
def test_an_invalid_tolerance_is_a_usage_error(pytester, tolerance):
    make_project(pytester, TWO_CHECKS)
    result = pytester.runpytest(f"--compress-tolerance={tolerance}")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--compress-tolerance must be a non-negative number*"])
