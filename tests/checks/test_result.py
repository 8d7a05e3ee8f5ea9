"""A check's result: the failure text and the JSON-safe dictionary."""

from __future__ import annotations

import json

from pytest_compress.budgets import BudgetCheck, Budgets
from tests.results import make_result

# --- the failure text -------------------------------------------------------------------


def test_explain_reads_like_the_design():
    result = make_result()
    assert not result.passed
    assert [v.budget for v in result.violations] == ["max_accuracy_drop"]
    assert result.explain().splitlines() == [
        "compression budget exceeded for int4 per-channel + prune 80% (global, magnitude):",
        "  accuracy 97.8% -> 94.9%: drop 2.9 pp > 2.0 pp allowed",
        "  size 246.1 kB -> 17.2 kB (ratio 0.07, budget 0.10): ok",
        "  sparsity 80.0%",
        "  model compress_model, data compress_data, device cpu",
    ]


def test_explain_of_a_lower_is_better_metric_speaks_of_an_increase():
    result = make_result(
        float_metric=0.30,
        compressed_metric=0.36,
        accuracy_drop=0.06,
        relative_drop=0.2,
        metric="cross_entropy",
        higher_is_better=False,
        budgets=Budgets(max_accuracy_drop=0.05, max_relative_drop=0.1),
    )
    lines = result.explain().splitlines()
    assert lines[1] == "  cross_entropy 0.3 -> 0.36: increase 0.06 > 0.05 allowed"
    assert lines[2] == "  cross_entropy relative increase 20.0% > 10.0% allowed"


def test_a_budget_that_holds_reads_at_the_usual_precision():
    # float32 arithmetic: 30 % of the weights pruned measures 0.30000002
    result = make_result(sparsity=0.30000002, budgets=Budgets(min_sparsity=0.3))
    assert "  sparsity 30.0% (budget 30.0%): ok" in result.explain().splitlines()
    near = make_result(accuracy_drop=0.0200000001, budgets=Budgets(max_accuracy_drop=0.02))
    assert "(drop 2.0 pp, budget 2.0 pp): ok" in near.explain()


def test_a_broken_budget_shows_the_digits_that_tell_value_and_limit_apart():
    result = make_result(sparsity=0.29999998, budgets=Budgets(min_sparsity=0.3))
    assert "  sparsity 29.999998% < 30.000000% required" in result.explain().splitlines()
    (violation,) = result.violations
    assert violation.describe(result.metric_kind, short=True) == "sparsity 29.999998% < 30.000000%"


def test_explain_of_a_baseline_regression_gives_both_numbers():
    result = make_result(budgets=Budgets()).with_checks(
        [
            BudgetCheck("baseline_metric", 0.949, 0.955, False, reference=0.96),
            BudgetCheck("baseline_size", 17_200, 17_170.0, False, reference=17_000),
        ]
    )
    text = result.explain()
    assert text.startswith("compression regressed vs baseline for int4")
    assert (
        "regressed vs baseline: accuracy 94.9% < baseline 96.0% by more than the "
        "tolerance 0.5 pp" in text
    )
    assert "regressed vs baseline: compressed size 17.2 kB > baseline 17.0 kB + 1%" in text


def test_to_dict_is_json_safe():
    entry = make_result().to_dict()
    assert json.loads(json.dumps(entry)) == entry
    assert entry["prune"]["amount"] == 0.8
    assert entry["violations"][0]["budget"] == "max_accuracy_drop"
    assert entry["passed"] is False
