"""Search: the most compression within budget, by bisection, from evaluated points only."""

from __future__ import annotations

import json

import pytest

from pytest_compress.budgets import Budgets
from pytest_compress.engine.apply import compress_model
from pytest_compress.engine.specs import PruneSpec, QuantSpec
from pytest_compress.tuning.grids import (
    BITS_GRID,
    MAX_EVALUATIONS,
    SPARSITY_GRID,
    THRESHOLD_GRID,
    check_search,
    grid_position,
    less_compression,
    max_evaluations,
)
from pytest_compress.tuning.search import recipe_at, search
from pytest_compress.tuning.trial import Trial
from tests.models import (
    CLIFF_ALPHA,
    CLIFF_SPARSITY,
    cliff_model,
    labelled_data,
    small_model,
)
from tests.tuning.callbacks import AccuracyTrial, fake_trial, setting_of, top1

GRIDS = {"sparsity": SPARSITY_GRID, "threshold": THRESHOLD_GRID, "bits": BITS_GRID}


def assert_well_formed(result, kind: str) -> None:
    """The invariants every search keeps, whatever the model."""
    assert result.evaluations <= max_evaluations(kind) <= MAX_EVALUATIONS
    settings = [step.setting for step in result.trail]
    assert len(settings) == len(set(settings)), "a setting was evaluated twice"
    if result.chosen is None:
        return
    chosen = [step for step in result.trail if step.setting == result.chosen]
    assert len(chosen) == 1 and chosen[0].passed, "the chosen point was evaluated and passed"
    assert result.chosen_trial is chosen[0]
    grid = GRIDS[kind]
    position = grid.index(result.chosen)
    if position + 1 < len(grid):
        # The trail itself proves the boundary: the next step was tried and broke.
        following = [step for step in result.trail if step.setting == grid[position + 1]]
        assert len(following) == 1 and following[0].damaged


# --- a fake trial whose boundary is known -------------------------------------------


@pytest.mark.parametrize("boundary", [None, *SPARSITY_GRID])
def test_sparsity_search_finds_every_boundary_within_seven_evaluations(boundary) -> None:
    calls: list = []
    limit = 0.0 if boundary is None else boundary
    result = search("sparsity", fake_trial("sparsity", damage_above=limit, calls=calls))
    assert result.chosen == boundary
    assert result.evaluations == len(calls) <= 7
    assert_well_formed(result, "sparsity")


def test_sparsity_boundary_between_grid_points_is_found_to_the_resolution() -> None:
    result = search("sparsity", fake_trial("sparsity", damage_above=0.8349))
    assert result.chosen == 0.83
    assert result.summary() == f"searched sparsity: 0.83 in {result.evaluations} evaluations"


@pytest.mark.parametrize("index", [0, 1, 63, 126, 200, len(THRESHOLD_GRID) - 1])
def test_threshold_search_finds_grid_boundaries_within_eight_evaluations(index) -> None:
    boundary = THRESHOLD_GRID[index]
    result = search("threshold", fake_trial("threshold", damage_above=boundary))
    assert result.chosen == boundary
    assert result.evaluations <= 8
    assert_well_formed(result, "threshold")


def test_threshold_search_covers_every_grid_boundary() -> None:
    for boundary in THRESHOLD_GRID:
        result = search("threshold", fake_trial("threshold", damage_above=boundary))
        assert result.chosen == boundary and result.evaluations <= 8


@pytest.mark.parametrize("alpha", [1.5e-4, 0.0123, 0.05, 0.3, 0.999])
def test_threshold_between_grid_points_is_found_within_one_log_step(alpha) -> None:
    result = search("threshold", fake_trial("threshold", damage_above=alpha))
    assert result.chosen is not None
    assert result.chosen <= alpha < result.chosen * 10 ** (1 / 63) * 1.01  # one step, rounded


def test_threshold_grid_is_log_spaced_from_1e4_to_1() -> None:
    assert THRESHOLD_GRID[0] == 1e-4 and THRESHOLD_GRID[-1] == 1.0
    assert all(a < b for a, b in zip(THRESHOLD_GRID, THRESHOLD_GRID[1:], strict=False))
    ratios = [b / a for a, b in zip(THRESHOLD_GRID, THRESHOLD_GRID[1:], strict=False)]
    assert max(ratios) < 1.05 and min(ratios) > 1.02
    assert max_evaluations("threshold") == 8


def test_nothing_passes_below_the_least_threshold() -> None:
    result = search("threshold", fake_trial("threshold", damage_above=5e-5))
    assert result.chosen is None and result.closest is not None
    assert result.closest.setting == THRESHOLD_GRID[0]


@pytest.mark.parametrize("fewest", [None, *BITS_GRID])
def test_bits_search_finds_the_fewest_bits_in_three_evaluations(fewest) -> None:
    result = search("bits", fake_trial("bits", damage_above=99 if fewest is None else fewest))
    assert result.chosen == fewest
    assert result.evaluations <= 3
    assert_well_formed(result, "bits")


def test_size_floor_below_the_boundary_still_finds_the_boundary() -> None:
    result = search("sparsity", fake_trial("sparsity", damage_above=0.83, floor_below=0.6))
    assert result.chosen == 0.83
    assert_well_formed(result, "sparsity")


def test_size_floor_beyond_the_metric_boundary_means_no_setting_passes() -> None:
    result = search("sparsity", fake_trial("sparsity", damage_above=0.4, floor_below=0.6))
    assert result.chosen is None and not result.passed
    assert result.closest is not None and result.closest.setting == 0.4
    assert result.reason() == (
        "sparsity 0.40 is the most compression within the metric budgets and still breaks: "
        "max_size_ratio broken"
    )


def test_no_passing_setting_says_so_with_the_trail() -> None:
    result = search("sparsity", fake_trial("sparsity", damage_above=None))
    assert result.chosen is None
    text = result.explain()
    lines = text.splitlines()
    assert lines[0] == f"searched sparsity: no setting passes ({result.evaluations} evaluations)"
    assert lines[1] == (
        "  even sparsity 0.01, the least compression searched, breaks: max_accuracy_drop broken"
    )
    assert lines[2].split() == ["#", "sparsity", "accuracy", "size", "verdict"]
    assert len(lines) == 3 + result.evaluations
    assert result.trail[0].setting == 0.5  # the first bisection step, in evaluation order
    assert lines[3].split()[:2] == ["1", "0.50"]


def test_trail_table_marks_the_chosen_row() -> None:
    result = search("bits", fake_trial("bits", damage_above=4))
    table = result.trail_table()
    assert [row.split()[1] for row in table.splitlines()[1:]] == ["5", "3", "4"]
    chosen_rows = [row for row in table.splitlines() if row.endswith("ok (chosen)")]
    assert len(chosen_rows) == 1 and chosen_rows[0].split()[1] == "4"
    assert result.summary() == "searched bits: 4 in 3 evaluations"


def test_to_dict_is_json_with_the_trail() -> None:
    result = search("sparsity", fake_trial("sparsity", damage_above=0.83))
    data = json.loads(json.dumps(result.to_dict()))
    assert data["search"] == "sparsity" and data["chosen"] == 0.83
    assert data["evaluations"] == len(data["trail"]) == result.evaluations
    assert data["recipe"] == "prune 83% (global, magnitude)"
    assert [step["setting"] for step in data["trail"]] == [s.setting for s in result.trail]


# --- fixed parts of the recipe ------------------------------------------------------


def test_sparsity_search_keeps_a_fixed_quantization() -> None:
    calls: list = []
    result = search(
        "sparsity",
        fake_trial("sparsity", damage_above=0.7, calls=calls),
        quantize=QuantSpec(bits=8),
    )
    assert all(q == QuantSpec(bits=8) for q, _ in calls)
    assert all(p.scope == "global" and p.structure == "unstructured" for _, p in calls)
    assert result.quantize == QuantSpec(bits=8)
    assert result.prune == PruneSpec(amount=0.7, scope="global")
    assert result.recipe == "int8 per-channel + prune 70% (global, magnitude)"


def test_bits_search_keeps_a_fixed_prune() -> None:
    calls: list = []
    search("bits", fake_trial("bits", damage_above=4, calls=calls), prune=PruneSpec(amount=0.5))
    assert all(p == PruneSpec(amount=0.5) for _, p in calls)


def test_threshold_search_extends_a_fixed_activation_prune_and_adds_exclusions() -> None:
    fixed = PruneSpec(activation_threshold=0.1, exclude=("head",))
    quantize, prune = recipe_at("threshold", 0.05, prune=fixed, exclude=("fc1",))
    assert quantize is None
    assert prune == PruneSpec(
        threshold=0.05, activation_threshold=0.1, scope="layer", exclude=("head", "fc1")
    )
    assert recipe_at("bits", 4, exclude=["fc1"])[0] == QuantSpec(bits=4, exclude=("fc1",))


# --- validation ---------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["amount", "Sparsity", "", None, 3])
def test_unknown_search_kind_names_the_argument_and_the_kinds(kind) -> None:
    with pytest.raises(ValueError, match=r"search must be one of 'sparsity', 'threshold', 'bits'"):
        check_search(kind)
    with pytest.raises(ValueError, match="search must be"):
        search(kind, fake_trial("bits", damage_above=4))


@pytest.mark.parametrize(
    ("kind", "fixed", "argument"),
    [
        ("sparsity", {"prune": PruneSpec(amount=0.5)}, "prune="),
        ("sparsity", {"prune": PruneSpec(threshold=0.1)}, "prune="),
        ("threshold", {"prune": PruneSpec(structure="2:4")}, "prune="),
    ],
)
def test_a_fixed_part_the_search_would_overwrite_is_refused(kind, fixed, argument) -> None:
    with pytest.raises(ValueError, match=f"{argument}.*conflicts with search='{kind}'"):
        check_search(kind, **fixed)


def test_a_bits_search_keeps_an_integer_template_and_refuses_a_float_format() -> None:
    template = QuantSpec(bits=4, group_size=32, method="gptq", symmetric=True)
    assert check_search("bits", quantize=template) == "bits"
    quant, _ = recipe_at("bits", 3, quantize=template, exclude=["fc1"])
    assert quant == QuantSpec(bits=3, group_size=32, method="gptq", symmetric=True,
                              exclude=("fc1",))  # fmt: skip
    with pytest.raises(ValueError, match="quantize='bf16' is a float format"):
        check_search("bits", quantize=QuantSpec(format="bf16"))


def test_a_bits_search_of_a_group_wise_mse_template_through_the_engine() -> None:
    model = small_model()
    trial = AccuracyTrial(model, labelled_data(model), max_drop=0.05)
    template = QuantSpec(bits=8, group_size=8, method="mse")
    result = search("bits", trial, quantize=template)
    tried = [quant for quant, _ in trial.calls]
    assert all(q.group_size == 8 and q.method == "mse" for q in tried)
    assert result.chosen in range(2, 9) and result.passed


def test_an_activation_only_prune_may_stay_fixed() -> None:
    assert check_search("sparsity", prune=PruneSpec(activation_threshold=0.1)) == "sparsity"
    assert check_search("sparsity", quantize=QuantSpec(bits=4)) == "sparsity"


@pytest.mark.parametrize(
    "budgets",
    [Budgets(), {}, {"max_accuracy_drop": None}, Budgets(max_size_ratio=0.3), ["min_sparsity"]],
)
def test_a_search_without_a_metric_budget_is_refused(budgets) -> None:
    with pytest.raises(
        ValueError,
        match="needs a budget that more compression can break: "
        "max_accuracy_drop or max_relative_drop",
    ):
        check_search("sparsity", budgets=budgets)


@pytest.mark.parametrize(
    "budgets",
    [Budgets(max_accuracy_drop=0.01), {"max_relative_drop": 0.02, "max_size": 10}],
)
def test_a_search_with_a_metric_budget_is_accepted(budgets) -> None:
    assert check_search("bits", budgets=budgets) == "bits"


def test_a_trial_callback_must_return_a_trial() -> None:
    expected = "must return a pytest_compress.tuning.trial.Trial, got float"
    with pytest.raises(TypeError, match=expected):
        search("bits", lambda q, p: 0.9)


def test_bad_exclude_patterns_name_the_argument() -> None:
    with pytest.raises(ValueError, match="exclude must be"):
        search("bits", fake_trial("bits", damage_above=4), exclude=[3])


# --- the baseline: less compression than recorded -------------------------------------


def test_less_compression_compares_grid_positions_with_a_tolerance() -> None:
    assert less_compression("sparsity", 0.80, 0.83)
    assert not less_compression("sparsity", 0.82, 0.83)  # one step of noise
    assert less_compression("sparsity", 0.82, 0.83, tolerance_steps=0)
    assert not less_compression("sparsity", 0.90, 0.83)
    assert less_compression("bits", 5, 4) and not less_compression("bits", 3, 4)
    assert less_compression("threshold", THRESHOLD_GRID[100], THRESHOLD_GRID[102])
    assert not less_compression("threshold", THRESHOLD_GRID[101], THRESHOLD_GRID[102])
    assert less_compression("bits", None, 4) and not less_compression("bits", None, None)
    assert not less_compression("bits", 8, None)
    assert grid_position("threshold", 0.0123) == grid_position("threshold", 0.01231)
    with pytest.raises(ValueError, match="tolerance_steps"):
        less_compression("bits", 4, 4, tolerance_steps=-1)


# --- a real model ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def real():
    model = small_model()
    return model, labelled_data(model)


def specs_at(kind: str, setting: float, quantize: QuantSpec | None) -> tuple:
    """The recipe a search of ``kind`` means at ``setting``, written out by hand."""
    if kind == "bits":
        return QuantSpec(bits=int(setting)), None
    if kind == "sparsity":
        return quantize, PruneSpec(amount=setting, scope="global")
    return quantize, PruneSpec(threshold=setting, scope="layer")


@pytest.mark.parametrize(
    ("kind", "fixed"),
    [
        ("sparsity", {}),
        ("sparsity", {"quantize": QuantSpec(bits=8)}),
        ("threshold", {}),
        ("bits", {}),
    ],
)
def test_search_on_a_real_model_stops_at_an_evaluated_boundary(real, kind, fixed) -> None:
    model, data = real
    trial = AccuracyTrial(model, data, max_drop=0.05)
    result = search(kind, trial, **fixed)
    assert result.passed
    assert_well_formed(result, kind)
    assert result.evaluations == len(trial.calls)
    assert setting_of(kind, result.quantize, result.prune) == result.chosen
    # The chosen recipe, compressed again from scratch and scored here, is within 5 pp
    # of the float model's 100 % (the data are labelled by it); one grid step further
    # is not.
    assert top1(model, data) == 1.0
    quantize = fixed.get("quantize")
    assert (result.quantize, result.prune) == specs_at(kind, result.chosen, quantize)
    chosen = compress_model(model, quantize=result.quantize, prune=result.prune)
    assert top1(chosen, data) == result.chosen_trial.metric >= 0.95
    grid = GRIDS[kind]
    position = grid.index(result.chosen)
    assert position + 1 < len(grid), "this model's boundary lies inside the grid"
    more_q, more_p = specs_at(kind, grid[position + 1], quantize)
    assert top1(compress_model(model, quantize=more_q, prune=more_p), data) < 0.95


@pytest.mark.parametrize("fixed", [{}, {"quantize": QuantSpec(bits=8)}])
def test_sparsity_search_finds_a_real_models_known_cliff(fixed) -> None:
    model, data = cliff_model()
    result = search("sparsity", AccuracyTrial(model, data, max_drop=0.02), **fixed)
    assert result.chosen == CLIFF_SPARSITY
    assert result.evaluations <= 7
    assert_well_formed(result, "sparsity")
    assert result.chosen_trial.metric == 1.0


def test_threshold_search_finds_a_real_models_known_cliff() -> None:
    model, data = cliff_model()
    result = search("threshold", AccuracyTrial(model, data, max_drop=0.02))
    below = max(alpha for alpha in THRESHOLD_GRID if alpha <= CLIFF_ALPHA)
    assert result.chosen == below == 0.833
    assert result.evaluations <= 8
    assert_well_formed(result, "threshold")


def test_bits_search_agrees_with_a_scan_of_every_width(real) -> None:
    model, data = real
    accuracy = {
        bits: top1(compress_model(model, quantize=QuantSpec(bits=bits)), data) for bits in BITS_GRID
    }
    within = [1.0 - accuracy[bits] <= 0.05 for bits in BITS_GRID]
    assert within == sorted(within, reverse=True), "this model's accuracy falls with fewer bits"
    fewest = min(bits for bits in BITS_GRID if 1.0 - accuracy[bits] <= 0.05)
    result = search("bits", AccuracyTrial(model, data, max_drop=0.05))
    assert result.chosen == fewest
    assert result.chosen_trial.metric == accuracy[fewest]
    assert result.evaluations <= 3


def test_trial_from_a_compression_result_reads_its_fields() -> None:
    from pytest_compress.budgets import BudgetCheck
    from pytest_compress.checks.result import CompressionResult

    result = CompressionResult(
        float_metric=0.978,
        compressed_metric=0.949,
        accuracy_drop=0.029,
        relative_drop=0.029 / 0.978,
        float_size=246_100,
        compressed_size=17_200,
        size_ratio=17_200 / 246_100,
        sparsity=0.8,
        recipe="int4",
        budgets=Budgets(max_accuracy_drop=0.02, max_size_ratio=0.1),
        checks=(
            BudgetCheck("max_accuracy_drop", 0.029, 0.02, False),
            BudgetCheck("max_size_ratio", 0.07, 0.1, True),
        ),
    )
    trial = Trial.from_result(result, setting=0.8)
    assert trial == Trial(
        metric=0.949,
        size=17_200,
        broken=("max_accuracy_drop",),
        violations=("drop 2.9 pp > 2.0 pp",),
        setting=0.8,
    )
    assert trial.result is result and trial.damaged and not trial.short_of_floor
    assert trial.verdict() == "drop 2.9 pp > 2.0 pp"
