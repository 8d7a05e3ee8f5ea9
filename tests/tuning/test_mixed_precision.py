"""Mixed precision: keep the most sensitive layers float until every budget holds."""

from __future__ import annotations

import json

import pytest

from pytest_compress.checks.request import check_keep_float
from pytest_compress.engine.apply import compress_model
from pytest_compress.engine.measure import evaluate
from pytest_compress.engine.specs import PruneSpec, QuantSpec
from pytest_compress.fileformat.container import compressed_size
from pytest_compress.tuning.keep_float import keep_float_auto, keep_float_specs
from pytest_compress.tuning.sensitivity import layer_sensitivity
from pytest_compress.tuning.trial import Trial
from tests.models import fragile_model
from tests.tuning.callbacks import AccuracyTrial, top1


def test_auto_keeps_exactly_the_fragile_layer_float_and_then_passes() -> None:
    model, data = fragile_model()
    trial = AccuracyTrial(model, data, max_drop=0.05)
    failing = trial(QuantSpec(bits=6), None)
    assert not failing.passed  # the check as it stands fails its accuracy budget
    ranking = layer_sensitivity(
        model, quantize="int6", evaluate=lambda m: evaluate(m, data), float_metric=1.0
    )
    result = keep_float_auto(model, ranking, trial, quantize=QuantSpec(bits=6), initial=failing)
    assert result.kept == ("fc1",)
    assert result.passed and result.final.passed
    assert result.evaluations == 1  # the initial trial was the caller's
    assert result.quantize == QuantSpec(bits=6, exclude=("fc1",))
    assert result.prune is None
    assert result.summary().startswith("kept float: fc1 (+")
    assert json.loads(json.dumps(result.to_dict()))["kept_float"] == ["fc1"]
    # Checked here from scratch: int6 everywhere loses more than 5 pp of the float
    # model's 100 %, int6 with fc1 float does not, and keeping fc1 float costs its bytes.
    everywhere = compress_model(model, quantize=QuantSpec(bits=6))
    fc1_float = compress_model(model, quantize=QuantSpec(bits=6, exclude=("fc1",)))
    assert top1(model, data) == 1.0
    assert top1(everywhere, data) < 0.95 <= top1(fc1_float, data)
    assert result.size_cost == compressed_size(fc1_float) - compressed_size(everywhere) > 0


def test_auto_evaluates_the_full_recipe_first_when_not_given_it() -> None:
    model, data = fragile_model()
    trial = AccuracyTrial(model, data, max_drop=0.05)
    result = keep_float_auto(model, ["fc1", "fc2", "fc3"], trial, quantize=QuantSpec(bits=6))
    assert result.kept == ("fc1",)
    assert [step.setting for step in result.trail] == [(), "fc1"]
    assert len(trial.calls) == 2


def test_a_passing_recipe_keeps_nothing_float() -> None:
    model, data = fragile_model()
    assert top1(compress_model(model, quantize="int6"), data) >= 0.5
    trial = AccuracyTrial(model, data, max_drop=0.5)
    result = keep_float_auto(model, ["fc1"], trial, quantize=QuantSpec(bits=6))
    assert result.kept == () and result.passed and result.size_cost == 0
    assert result.summary() == "kept float: none needed"


def _fake(broken_until: int, floor_from: int | None = None):
    """A trial that passes once ``broken_until`` layers are kept float."""
    calls: list = []

    def trial(quantize, prune):
        kept = len(quantize.exclude) if quantize is not None else 0
        calls.append(kept)
        broken = ["max_accuracy_drop"] if kept < broken_until else []
        if floor_from is not None and kept >= floor_from:
            broken.append("max_size_ratio")
        return Trial(metric=0.9, size=100 + kept, broken=tuple(broken))

    return trial, calls


def test_layers_are_added_in_ranking_order_one_evaluation_each() -> None:
    model, _ = fragile_model()
    trial, calls = _fake(broken_until=2)
    result = keep_float_auto(model, ["fc3", "fc1", "fc2"], trial, quantize=QuantSpec(bits=4))
    assert result.kept == ("fc3", "fc1") and result.passed
    assert calls == [0, 1, 2]
    assert result.quantize.exclude == ("fc3", "fc1")


def test_a_broken_size_budget_stops_the_search() -> None:
    model, _ = fragile_model()
    trial, calls = _fake(broken_until=3, floor_from=1)
    result = keep_float_auto(model, ["fc1", "fc2", "fc3"], trial, quantize=QuantSpec(bits=4))
    assert result.kept == ("fc1",) and not result.passed
    assert calls == [0, 1]
    assert "still breaks" in result.summary()


def test_every_layer_is_never_kept_float() -> None:
    model, _ = fragile_model()
    trial, calls = _fake(broken_until=99)
    result = keep_float_auto(model, ["fc1", "fc2", "fc3"], trial, quantize=QuantSpec(bits=4))
    assert result.kept == ("fc1", "fc2") and not result.passed


def test_max_layers_caps_the_search() -> None:
    model, _ = fragile_model()
    trial, calls = _fake(broken_until=99)
    result = keep_float_auto(
        model, ["fc1", "fc2", "fc3"], trial, quantize=QuantSpec(bits=4), max_layers=1
    )
    assert result.kept == ("fc1",)


def test_explicit_patterns_join_the_exclude_of_both_specs() -> None:
    quantize, prune = keep_float_specs(
        QuantSpec(bits=4, exclude=("head",)), PruneSpec(amount=0.5), ["fc1", "blocks.*"]
    )
    assert quantize == QuantSpec(bits=4, exclude=("head", "fc1", "blocks.*"))
    assert prune == PruneSpec(amount=0.5, exclude=("fc1", "blocks.*"))


def test_a_spec_left_without_layers_is_dropped_and_all_float_is_refused() -> None:
    model, _ = fragile_model()
    quantize, prune = keep_float_specs(
        QuantSpec(bits=4), PruneSpec(amount=0.5, include=("fc1",)), ["fc1"], model=model
    )
    assert quantize == QuantSpec(bits=4, exclude=("fc1",)) and prune is None
    with pytest.raises(ValueError, match="keeps every compressed layer float"):
        keep_float_specs(QuantSpec(bits=4), None, ["fc*"], model=model)


@pytest.mark.parametrize(
    ("value", "expected"),
    [("auto", "auto"), ("fc1", ("fc1",)), (["fc1", "features.*"], ("fc1", "features.*"))],
)
def test_keep_float_values(value, expected) -> None:
    assert check_keep_float(value) == expected


@pytest.mark.parametrize("value", ["", [], [""], [3], 0.5, None, ("fc1", None)])
def test_bad_keep_float_values_name_the_argument(value) -> None:
    with pytest.raises(ValueError, match='keep_float must be "auto" or module-name patterns'):
        check_keep_float(value)


def test_a_ranking_naming_unknown_layers_is_refused() -> None:
    model, _ = fragile_model()
    trial, _ = _fake(broken_until=1)
    with pytest.raises(ValueError, match="ranking names layers the recipe does not compress"):
        keep_float_auto(model, ["fc9"], trial, quantize=QuantSpec(bits=4))
    with pytest.raises(ValueError, match="max_layers"):
        keep_float_auto(model, ["fc1"], trial, quantize=QuantSpec(bits=4), max_layers=0)
