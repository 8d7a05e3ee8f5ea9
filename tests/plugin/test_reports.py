"""Reports that read right: rows within the width, whole numbers, the full text in JSON."""

from __future__ import annotations

import pytest

from pytest_compress.plugin.report import MARKDOWN_WIDTH, markdown_table, terminal_table
from pytest_compress.tables import fit_table, shorten, wrap_items
from tests.plugin_projects import make_project, read_json

LONG_RECIPE = (
    "int4 per-channel + prune 50% (global, magnitude) [float: "
    + ", ".join(f"encoder.layers.{i}.attention.output.dense" for i in range(12))
    + " (+1.2 MB)]"
)
LONG_TEST = "tests/models/test_the_encoder.py::test_compression[" + "x" * 120 + "]"
NUMBERS = ("97.2% -> 96.5%", "0.7 pp", "251.7 kB -> 64.1 kB", "0.25", "50.0%", "FAILED")


def entry(check: str = LONG_TEST, recipe: str = LONG_RECIPE) -> dict[str, object]:
    return {
        "check": check,
        "recipe": recipe,
        "metric": "accuracy",
        "higher_is_better": True,
        "float_metric": 0.9722,
        "compressed_metric": 0.9650,
        "accuracy_drop": 0.0072,
        "float_size": 251_700,
        "compressed_size": 64_100,
        "size_ratio": 0.2547,
        "sparsity": 0.5,
        "violations": [{"budget": "max_accuracy_drop"}],
    }


def test_shorten_cuts_the_middle_and_keeps_both_ends():
    assert shorten("abcdefghij", 10) == "abcdefghij"
    assert shorten("abcdefghij", 7) == "ab...ij"
    assert shorten("abcdefghij", 8) == "abc...ij"
    assert len(shorten("x" * 500, 40)) == 40


def test_fit_table_shortens_only_the_text_columns_or_gives_up():
    rows = [["a" * 50, "b" * 50, "12.5%"]]
    lines = fit_table(["test", "recipe", "n"], rows, 60, shrink=(0, 1), minimum=10)
    assert lines is not None
    assert max(map(len, lines)) <= 60
    assert lines[1].endswith("12.5%")
    assert fit_table(["test", "recipe", "n"], rows, 20, shrink=(0, 1), minimum=10) is None


def test_wrap_items_never_splits_an_item():
    lines = wrap_items(["aaaa", "bbbb", "cccc", "d" * 30], 12, indent="  ")
    assert lines == ["  aaaa  bbbb", "  cccc", "  " + "d" * 30]


@pytest.mark.parametrize("width", [40, 80, 100, 130, 200])
def test_terminal_rows_stay_within_the_width_with_whole_numbers(width):
    entries = [entry(), entry(check="test_short.py::test_int8", recipe="int8 per-channel")]
    lines = terminal_table(entries, width)
    assert max(len(line) for line in lines) <= width
    text = "\n".join(lines)
    for number in NUMBERS:  # no number is cut, whatever the width
        assert number in text
    assert "..." in text  # the long recipe and test were shortened
    assert "test_short.py::test_int8" in text and "int8 per-channel" in text


def test_a_wide_terminal_shows_the_whole_text():
    lines = terminal_table([entry()], 1000)
    assert LONG_RECIPE in lines[1] and LONG_TEST in lines[1]


def test_markdown_rows_stay_within_their_width():
    text = markdown_table([entry(), entry(recipe="a | b")])
    rows = [line for line in text.splitlines() if line.startswith("| ")]
    assert max(len(line) for line in rows) <= MARKDOWN_WIDTH
    assert "..." in rows[1] and "97.2% -> 96.5%" in rows[1]
    assert "a \\| b" in text


def test_the_terminal_report_fits_the_terminal_and_json_keeps_the_full_text(pytester, monkeypatch):
    long_id = "a_very_long_parameter_id_" * 8
    make_project(
        pytester,
        f"""
        import pytest

        @pytest.mark.parametrize("name", [1], ids=["{long_id}"])
        @pytest.mark.compress(quantize="int8", prune=0.5, max_accuracy_drop=0.99)
        def test_a_check_with_a_long_name(name):
            pass
        """,
    )
    for width in (80, 120):
        monkeypatch.setenv("COLUMNS", str(width))
        result = pytester.runpytest(
            "-p", "no:cacheprovider", "--compress-report=report.json", "--compress-markdown=r.md"
        )
        result.assert_outcomes(passed=1)
        lines = result.stdout.lines
        start = next(i for i, line in enumerate(lines) if "compression report" in line)
        end = next(i for i, line in enumerate(lines) if line.startswith("JSON report written"))
        rows = lines[start + 1 : end]
        assert rows and all(len(line) <= width for line in rows), rows
        assert any("..." in line for line in rows)
        assert any("int8 per-ch" in line and "magnitude)" in line for line in rows)
        markdown = (pytester.path / "r.md").read_text().splitlines()
        assert all(len(line) <= MARKDOWN_WIDTH for line in markdown if line.startswith("|"))
        check = read_json(pytester.path / "report.json")["checks"][0]
        assert long_id in check["check"]


SLOW_METRIC = """
import time

from pytest_compress.engine.measure import model_metric

DELAY = 0.05

@pytest.fixture(scope="session")
def compress_metric():
    def fixed(model, data):  # every compressed copy loses 7 points: every trial fails
        time.sleep(DELAY)
        return 0.97 if model is ORIGINAL[0] else 0.90
    return model_metric(fixed)
"""


def test_json_seconds_cover_the_search_and_the_sensitivity(pytester):
    delay = 0.05  # SLOW_METRIC's: each evaluation takes at least this long
    make_project(
        pytester,
        """
        import pytest

        @pytest.mark.compress(search="bits", max_accuracy_drop=0.02)
        def test_search():
            pass
        """,
        conftest_extra=SLOW_METRIC,
    )
    result = pytester.runpytest("-p", "no:cacheprovider", "--compress-report=report.json")
    result.assert_outcomes(failed=1)
    check = read_json(pytester.path / "report.json")["checks"][0]
    timings, evaluations = check["timings"], check["search"]["evaluations"]
    layers = len(check["sensitivity"]["layers"])
    assert evaluations >= 2 and layers == 2
    assert timings["search"] >= evaluations * delay
    assert timings["sensitivity"] >= layers * delay
    assert check["seconds"] == timings["total"]
    assert check["seconds"] >= timings["search"] + timings["sensitivity"]
    assert check["seconds"] >= (evaluations + layers) * delay
    assert {"compress", "evaluate"} <= set(timings)  # the reported evaluation's own phases


def test_a_long_keep_float_list_is_counted_in_the_row_and_whole_in_the_json():
    names = [f"encoder.layer.{i}.attention.self.query" for i in range(20)]
    many = {**entry(check="t.py::test_auto", recipe="int4 per-channel"),
            "keep_float": {"kept_float": names, "size_cost": 69_400_000}}  # fmt: skip
    few = {**entry(check="t.py::test_few", recipe="int4 per-channel"),
           "keep_float": {"kept_float": names[:3], "size_cost": 1_000}}  # fmt: skip
    text = "\n".join(terminal_table([many, few], 1000))
    assert "int4 per-channel [float: 20 layers (+69.4 MB)]" in text
    assert f"[float: {', '.join(names[:3])} (+1.0 kB)]" in text
    assert max(len(line) for line in text.splitlines()) < 250  # not 900 characters a row
