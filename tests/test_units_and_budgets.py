"""Sizes and budgets (units.py, budgets.py): parsing, formatting, and the at-budget edge."""

from __future__ import annotations

import math

import pytest

from pytest_compress.budgets import Budgets, at_least, at_most
from pytest_compress.metrics import MetricKind
from pytest_compress.tuning.trial import Trial
from pytest_compress.units import (
    distinct,
    format_duration,
    format_size,
    parse_duration,
    parse_size,
)
from tests.results import make_result

# --- sizes ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (1234, 1234),
        ("0", 0),
        ("2 MB", 2_000_000),
        ("512 kB", 512_000),
        ("512kb", 512_000),
        ("1.5 MiB", 1_572_864),
        ("1.1 kB", 1100),  # exact decimal arithmetic, not 1100.0000000000002
        ("3 GiB", 3 * 1024**3),
        ("1 GB", 10**9),
        ("  7 B ", 7),
        ("1.0005 kB", 1000),  # a fraction of a byte is dropped: the budget is a ceiling
    ],
)
def test_parse_size_accepts_bytes_and_decimal_and_binary_units(text, expected):
    assert parse_size(text) == expected


@pytest.mark.parametrize("bad", ["2 XB", "MB", "-1 MB", "1e3", "", "two MB", -5, 2.5, True, None])
def test_parse_size_rejects_what_is_not_a_size(bad):
    with pytest.raises(ValueError, match="size|MB"):
        parse_size(bad)


# --- durations --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("5 ms", 0.005),
        ("250us", 0.00025),
        ("2 \u00b5s", 2e-6),
        ("1.5 s", 1.5),
        (" 3 ", 3.0),
        (2, 2.0),
        (0.25, 0.25),
    ],
)
def test_parse_duration_accepts_seconds_and_units(value, seconds):
    assert parse_duration(value) == pytest.approx(seconds)


@pytest.mark.parametrize("bad", ["5 min", "ms", "-1 ms", "", -1, math.nan, math.inf, True, None])
def test_parse_duration_rejects_what_is_not_a_duration(bad):
    with pytest.raises(ValueError, match="duration|seconds"):
        parse_duration(bad)


def test_format_duration():
    assert format_duration(0.01234) == "12.3 ms"
    assert format_duration(2.5) == "2.50 s"


def test_format_size_uses_decimal_units():
    assert format_size(999) == "999 B"
    assert format_size(246_100) == "246.1 kB"
    assert format_size(17_200_000) == "17.2 MB"
    assert format_size(3_000_000_000) == "3.0 GB"


def test_distinct_widens_precision_until_the_numbers_differ():
    assert distinct(0.0201, 0.02, MetricKind().difference) == ("2.01 pp", "2.00 pp")
    assert distinct(0.02, 0.02, MetricKind().difference) == ("2.0 pp", "2.0 pp")
    assert distinct(0.029, 0.02, MetricKind().difference) == ("2.9 pp", "2.0 pp")


# --- budgets ----------------------------------------------------------------------------


def test_a_value_exactly_at_its_budget_passes_in_both_directions():
    drop = 0.97 - 0.95  # 0.020000000000000018 in floating point
    assert drop > 0.02
    assert at_most(drop, 0.02)
    assert not at_most(0.0201, 0.02)
    assert at_least(0.8 - 1e-17, 0.8)
    assert not at_least(0.799, 0.8)
    # bytes are integers and are compared exactly
    assert at_most(1000, 1000)
    assert not at_most(1001, 1000)


def test_budgets_check_lists_every_broken_budget_in_order():
    budgets = Budgets(
        max_accuracy_drop=0.01,
        max_relative_drop=0.5,
        max_size_ratio=0.1,
        max_size=100,
        min_sparsity=0.9,
    )
    checks = budgets.check(
        {
            "accuracy_drop": 0.02,
            "relative_drop": 0.02,
            "size_ratio": 0.2,
            "compressed_size": 100,
            "sparsity": 0.5,
        }
    )
    assert [(c.budget, c.ok) for c in checks] == [
        ("max_accuracy_drop", False),
        ("max_relative_drop", True),
        ("max_size_ratio", False),
        ("max_size", True),
        ("min_sparsity", False),
    ]


def test_a_nan_measurement_breaks_its_budget():
    (check,) = Budgets(max_accuracy_drop=0.99).check({"accuracy_drop": math.nan})
    assert not check.ok


def test_metric_kinds_read_in_percent_only_for_accuracy() -> None:
    accuracy = MetricKind.named("accuracy")
    loss = MetricKind.named("mse", higher_is_better=False)
    assert (accuracy.value(0.978), accuracy.difference(0.029)) == ("97.8%", "2.9 pp")
    assert (loss.value(0.123456), loss.difference(0.01)) == ("0.1235", "0.01")
    assert (accuracy.drop_word, loss.drop_word) == ("drop", "increase")
    assert (accuracy.drop(0.9, 0.8), loss.drop(0.1, 0.3)) == pytest.approx((0.1, 0.2))
    assert accuracy.value(math.nan) == "nan"


def test_a_budget_added_to_the_registry_is_parsed_checked_and_explained(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # what a new budget needs: one registry entry naming the result field it limits
    from pytest_compress import budgets
    from pytest_compress.units import format_size as size_words

    entry = budgets.Budget(
        "max_float_size",
        "float_size",
        upper=True,
        eased_by_compression=False,
        label="float size",
        short="float size",
        render=lambda v, m, d: size_words(v, d),
        parse=budgets.size,
    )
    monkeypatch.setitem(budgets.BUDGETS, entry.name, entry)
    limits = Budgets(max_float_size="100 kB", max_size_ratio=0.5)
    assert limits.max_float_size == 100_000
    with pytest.raises(ValueError, match="max_float_size must be an int of bytes"):
        Budgets(max_float_size=-1)
    result = make_result(budgets=limits)
    broken = [check for check in result.checks if not check.ok]
    assert [check.budget for check in broken] == ["max_float_size"]
    assert "float size 246.1 kB > 100.0 kB allowed" in result.explain()
    assert Trial.from_result(result).violations == ("float size 246.1 kB > 100.0 kB",)
    assert Trial.from_result(result).damaged  # not eased by compression: a search stops
