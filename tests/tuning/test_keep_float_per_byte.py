"""keep_float="auto" ranks every compressed layer by metric recovered per byte kept float."""

from __future__ import annotations

import pytest
import torch

from pytest_compress.engine.apply import compress_model
from pytest_compress.engine.specs import QuantSpec
from pytest_compress.fileformat.container import compressed_size, stored_sizes
from pytest_compress.tuning.keep_float import (
    KeepFloatCandidate,
    keep_float_auto,
    per_byte_ranking,
    rank_layers_per_byte,
)
from pytest_compress.tuning.proxy import output_errors
from pytest_compress.tuning.sensitivity import layer_sensitivity, touched_layers
from pytest_compress.tuning.trial import Trial
from tests.models import costly_sensitive_model, fragile_model

INT4 = QuantSpec(bits=4)
BUDGET = 1.2  # mean squared error over the float outputs; int4 everywhere costs 1.64


def mse(model: torch.nn.Module, reference: torch.nn.Module, inputs: torch.Tensor) -> float:
    with torch.no_grad():
        return float((model(inputs) - reference(inputs)).pow(2).mean())


class MseTrial:
    """Broken when the compressed outputs' mean squared error to the float ones exceeds BUDGET."""

    def __init__(self, model: torch.nn.Module, inputs: torch.Tensor) -> None:
        self.model, self.inputs = model, inputs

    def __call__(self, quantize: QuantSpec | None, prune: object) -> Trial:
        compressed = compress_model(self.model, quantize=quantize)
        error = mse(compressed, self.model, self.inputs)
        broken = ("max_accuracy_drop",) if error > BUDGET else ()
        return Trial(metric=error, size=compressed_size(compressed), broken=broken)


def sensitivity_of(model: torch.nn.Module, inputs: torch.Tensor):
    return layer_sensitivity(
        model,
        quantize=INT4,
        evaluate=lambda m: mse(m, model, inputs),
        float_metric=0.0,
        higher_is_better=False,
    )


def test_the_cheap_layer_is_kept_float_although_the_big_one_hurts_more_alone() -> None:
    model, inputs = costly_sensitive_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    sensitivity = sensitivity_of(model, inputs)
    drops = {entry.layer: entry.drop for entry in sensitivity.layers}
    assert sensitivity.ranked == ("big", "small") and drops["big"] > drops["small"] > 0
    ranking = rank_layers_per_byte(model, INT4, None, [inputs[:128]], sensitivity=sensitivity)
    assert [c.layer for c in ranking] == ["small", "big"]
    trial = MseTrial(model, inputs)
    per_byte = keep_float_auto(model, ranking, trial, quantize=INT4)
    by_drop = keep_float_auto(model, sensitivity, trial, quantize=INT4)
    assert per_byte.kept == ("small",) and per_byte.passed
    assert by_drop.kept == ("big",) and by_drop.passed  # what ranking by drop alone kept
    # Checked from scratch: both pass the budget, and keeping "small" float is far smaller.
    small_float = compress_model(model, quantize=QuantSpec(bits=4, exclude=("small",)))
    big_float = compress_model(model, quantize=QuantSpec(bits=4, exclude=("big",)))
    assert mse(small_float, model, inputs) <= BUDGET and mse(big_float, model, inputs) <= BUDGET
    assert per_byte.final.size == compressed_size(small_float)
    assert 3 * compressed_size(small_float) < compressed_size(big_float)
    assert [c.layer for c in per_byte.ranking] == ["small", "big"]
    assert per_byte.to_dict()["ranking"][0]["layer"] == "small"
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_costs_are_the_stored_bytes_a_layer_adds_kept_float() -> None:
    model, inputs = costly_sensitive_model()
    ranking = {c.layer: c for c in rank_layers_per_byte(model, INT4, None, [inputs])}
    compressed = compress_model(model, quantize=INT4)
    for name in ("big", "small"):
        float_bytes = stored_sizes(model)[f"{name}.weight"]
        assert float_bytes == model.get_parameter(f"{name}.weight").numel() * 4
        assert ranking[name].cost == float_bytes - stored_sizes(compressed)[f"{name}.weight"]
        kept = compress_model(model, quantize=QuantSpec(bits=4, exclude=(name,)))
        grown = compressed_size(kept) - compressed_size(compressed)
        assert abs(grown - ranking[name].cost) < 64  # the rest is the header's record


def test_stored_sizes_add_up_to_the_file_but_its_header() -> None:
    model, _ = fragile_model()
    compressed = compress_model(model, quantize=INT4)
    sizes = stored_sizes(compressed)
    assert set(sizes) == set(compressed.state_dict())
    assert 0 < compressed_size(compressed) - sum(sizes.values()) < 2048


def test_output_errors_equal_a_hand_computation() -> None:
    model, inputs = costly_sensitive_model()
    compressed = compress_model(model, quantize=INT4)
    batches = [inputs[:128], inputs[128:256], inputs[256:]]
    errors = output_errors(model, compressed, touched_layers(model, INT4, None), batches)
    seen = inputs[:256]  # two batches by default
    with torch.no_grad():
        hidden = torch.relu(model.big(seen))
        pairs = {
            "big": (compressed.big(seen), model.big(seen)),
            "small": (compressed.small(hidden), model.small(hidden)),
        }
    for name, (approximate, exact) in pairs.items():
        expected = float((approximate - exact).pow(2).sum() / exact.pow(2).sum())
        assert abs(errors[name] - expected) <= 1e-5 * expected
    assert not model.big._forward_hooks and not model.small._forward_hooks


def test_unmeasured_layers_are_estimated_from_the_measured_ones() -> None:
    costs = {"a": 100, "b": 100, "c": 1000, "d": 10, "e": 10}
    proxies = {"a": 0.2, "b": 0.1, "c": 0.4, "d": 0.01, "e": 0.0}
    drops = {"a": 0.02, "c": 0.04}  # drop / proxy: 0.1 for both
    ranking = per_byte_ranking(costs, proxies, drops)
    by_name = {c.layer: c for c in ranking}
    assert by_name["b"].drop is None and abs(by_name["b"].estimated_drop - 0.01) < 1e-12
    assert by_name["a"].estimated_drop == 0.02
    # per byte: a 2e-4, b 1e-4, d 1e-4 (0.001 / 10), c 4e-5, e nothing
    assert [c.layer for c in ranking] == ["a", "b", "d", "c", "e"]


def test_without_a_measured_drop_the_proxy_per_byte_orders() -> None:
    ranking = per_byte_ranking({"a": 100, "b": 10}, {"a": 0.5, "b": 0.1}, {})
    assert [c.layer for c in ranking] == ["b", "a"]
    assert all(isinstance(c, KeepFloatCandidate) and c.estimated_drop == 0 for c in ranking)


def test_long_rankings_add_layers_in_growing_steps() -> None:
    model = torch.nn.Sequential(*[torch.nn.Linear(4, 4) for _ in range(40)])
    calls: list[int] = []

    def trial(quantize, prune):
        calls.append(len(quantize.exclude))
        return Trial(metric=0.9, size=100, broken=("max_accuracy_drop",) if calls[-1] < 30 else ())

    names = [str(i) for i in range(40)]
    result = keep_float_auto(model, names, trial, quantize=INT4)
    assert calls == [0, 1, 2, 3, 4, 6, 9, 13, 19, 28, 39]  # 10 evaluations for 39 layers
    assert result.passed and len(result.kept) == 39 and result.kept == tuple(names[:39])
    assert result.trail[5].setting == ("4", "5")  # a step of several names them all


def test_a_sensitivity_ranked_by_the_proxy_lends_its_errors_and_no_pass_runs(monkeypatch) -> None:
    model, inputs = costly_sensitive_model()
    batches = [inputs[:128], inputs[128:256]]
    sensitivity = layer_sensitivity(
        model, quantize=INT4, evaluate=lambda m: mse(m, model, inputs), float_metric=0.0,
        higher_is_better=False, limit=1, proxy_data=batches,
    )  # fmt: skip
    layers = touched_layers(model, INT4, None)
    errors = output_errors(model, compress_model(model, quantize=INT4), layers, batches)
    monkeypatch.setattr(
        "pytest_compress.tuning.keep_float.output_errors",
        lambda *args, **kwargs: pytest.fail("the proxy ran again"),
    )
    lent = rank_layers_per_byte(model, INT4, None, batches, sensitivity=sensitivity)
    assert {c.layer: c.proxy for c in lent} == errors  # the same errors, not measured again
    # the layer measured alone keeps its drop; the other is estimated from the proxy
    assert sum(c.drop is not None for c in lent) == 1
