"""Layer sensitivity: each layer compressed alone with the recipe, ranked by the drop it causes."""

from __future__ import annotations

import fnmatch
import json
import re

import pytest
import torch
from torch import nn

from pytest_compress.engine.activations import ActivationFakeQuantize, activation_hooks
from pytest_compress.engine.apply import compress_model
from pytest_compress.engine.measure import evaluate
from pytest_compress.engine.specs import PruneSpec, QuantSpec
from pytest_compress.tuning.proxy import PROXY_BATCHES
from pytest_compress.tuning.sensitivity import (
    DEFAULT_LIMIT,
    SHOWN_IN_MESSAGE,
    SensitivityResult,
    layer_sensitivity,
    literal_pattern,
)
from tests.models import (
    TiedEmbeddingModel,
    classification_batches,
    fragile_model,
    seeded,
)


class Recorder:
    """An ``evaluate`` callback that keeps every model it was handed."""

    def __init__(self, data: list) -> None:
        self.data = data
        self.models: list[nn.Module] = []

    def __call__(self, model: nn.Module) -> float:
        self.models.append(model)
        return evaluate(model, self.data)


def test_the_fragile_layer_ranks_first_with_one_evaluation_per_layer() -> None:
    model, data = fragile_model()
    recorder = Recorder(data)
    result = layer_sensitivity(model, quantize="int6", evaluate=recorder, float_metric=1.0)
    assert result.ranked[0] == "fc1"
    assert sorted(result.ranked) == ["fc1", "fc2", "fc3"]
    assert result.evaluations == len(recorder.models) == 3
    drops = [entry.drop for entry in result.layers]
    assert drops == sorted(drops, reverse=True)
    assert result.layers[0].drop > 0.2 > result.layers[1].drop
    assert result.layers[0].parameters == 512
    assert re.fullmatch(
        r"most sensitive layers: fc1 \(-\d+\.\d pp alone\), fc\d \(-\d\.\d pp alone\), "
        r"fc\d \(-\d\.\d pp alone\)",
        result.summary(),
    ), result.summary()
    assert result.summary(top=1).count("alone") == 1


def test_the_model_is_not_modified() -> None:
    model, data = fragile_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    layer_sensitivity(
        model,
        quantize="int4",
        prune=PruneSpec(amount=0.6, scope="global"),
        evaluate=Recorder(data),
        float_metric=1.0,
    )
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key])


def test_the_cap_keeps_the_largest_layers_before_evaluating() -> None:
    model, data = fragile_model()
    recorder = Recorder(data)
    result = layer_sensitivity(model, quantize="int6", evaluate=recorder, float_metric=1.0, limit=1)
    assert result.ranked == ("fc2",)  # 2,048 weights; fc1 has 512 and fc3 256
    assert result.skipped == ("fc1", "fc3")
    assert len(recorder.models) == 1
    assert result.summary().endswith("; 2 smaller layers not measured")
    assert result.to_dict()["skipped"] == ["fc1", "fc3"]


def _weights(model: nn.Module) -> dict[str, torch.Tensor]:
    return {name: model.get_submodule(name).weight.detach() for name in ("fc1", "fc2", "fc3")}


@pytest.mark.parametrize(
    ("quantize", "prune"),
    [
        ("int4", PruneSpec(amount=0.5)),
        (QuantSpec(bits=3, symmetric=True), PruneSpec(threshold=0.3)),
        (None, PruneSpec(structure="2:4")),
        ("int5", PruneSpec(amount=0.7, scope="global")),
        (None, PruneSpec(amount=0.9, scope="global")),
    ],
)
def test_each_layer_alone_gets_exactly_what_the_full_recipe_gives_it(quantize, prune) -> None:
    model, data = fragile_model()
    recorder = Recorder(data)
    result = layer_sensitivity(
        model, quantize=quantize, prune=prune, evaluate=recorder, float_metric=1.0
    )
    full = _weights(compress_model(model, quantize=quantize, prune=prune))
    original = _weights(model)
    by_layer = dict(
        zip(
            [e.layer for e in sorted(result.layers, key=lambda e: -e.parameters)],
            recorder.models,
            strict=True,
        )
    )
    for layer, alone in by_layer.items():
        for name, weight in _weights(alone).items():
            expected = full[name] if name == layer else original[name]
            assert torch.equal(weight, expected), (layer, name)


def test_global_pruning_blames_a_layer_for_its_own_share_of_the_global_mask() -> None:
    model, data = fragile_model()
    recorder = Recorder(data)
    prune = PruneSpec(amount=0.8, scope="global")
    layer_sensitivity(model, prune=prune, evaluate=recorder, float_metric=1.0)
    full = compress_model(model, prune=prune)
    # fc1 holds the 50.0 weights, so global ranking prunes it far less than 80 %.
    fc1_alone = next(m for m in recorder.models if not torch.equal(m.fc1.weight, model.fc1.weight))
    share = float((fc1_alone.fc1.weight == 0).float().mean())
    assert share == float((full.fc1.weight == 0).float().mean()) != 0.8


def test_layers_the_recipe_does_not_touch_are_not_measured() -> None:
    model, data = fragile_model()
    result = layer_sensitivity(
        model,
        quantize=QuantSpec(bits=6, exclude=("fc3",)),
        prune=PruneSpec(amount=0.5, include=("fc1",)),
        evaluate=Recorder(data),
        float_metric=1.0,
    )
    assert sorted(result.ranked) == ["fc1", "fc2"]


def test_activation_quantization_stays_on_the_layer_alone() -> None:
    model, data = fragile_model()
    recorder = Recorder(data)
    inputs = [x for x, _ in data]
    layer_sensitivity(
        model, quantize="w8a8", evaluate=recorder, float_metric=1.0, calibration_data=inputs
    )
    hooked = [[name for name, hook in activation_hooks(m)] for m in recorder.models]
    assert sorted(hooked) == [["fc1"], ["fc2"], ["fc3"]]
    assert all(
        isinstance(hook, ActivationFakeQuantize)
        for m in recorder.models
        for _, hook in activation_hooks(m)
    )


def test_tied_weights_are_measured_once() -> None:
    model = seeded(TiedEmbeddingModel())
    tokens = torch.randint(0, 50, (64, 5), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        targets = model(tokens).argmax(-1)
    data = [(tokens, targets)]
    result = layer_sensitivity(
        model, quantize="int2", evaluate=lambda m: evaluate(m, data), float_metric=1.0
    )
    assert sorted(result.ranked) == ["embed", "hidden"]


def test_a_loss_shows_its_rise_and_a_harmless_recipe_says_so() -> None:
    model, data = fragile_model()
    result = layer_sensitivity(
        model,
        quantize="int8",
        evaluate=lambda m: 0.5,
        float_metric=0.25,
        higher_is_better=False,
        metric_name="loss",
    )
    assert result.layers[0].drop == 0.25
    assert "fc2 (+0.25 alone)" in result.summary()
    harmless = layer_sensitivity(model, quantize="int8", evaluate=lambda m: 1.0, float_metric=1.0)
    assert harmless.summary() == (
        "most sensitive layers: none hurts alone (the drop comes from layers together)"
    )


def test_table_and_json_list_every_layer() -> None:
    model, data = fragile_model()
    result = layer_sensitivity(
        model, quantize="int6", evaluate=lambda m: evaluate(m, data), float_metric=1.0
    )
    rows = result.table().splitlines()
    assert rows[0].split() == ["layer", "weights", "accuracy", "change"]
    assert [row.split()[0] for row in rows[1:]] == list(result.ranked)
    data_json = json.loads(json.dumps(result.to_dict()))
    assert [entry["layer"] for entry in data_json["layers"]] == list(result.ranked)
    assert data_json["evaluations"] == 3 and data_json["recipe"] == "int6 per-channel"


@pytest.mark.parametrize("limit", [0, -1, 2.5, "20", True])
def test_a_bad_limit_names_the_argument(limit) -> None:
    model, _ = fragile_model()
    with pytest.raises(ValueError, match="limit must be an int >= 1"):
        layer_sensitivity(
            model, quantize="int8", evaluate=lambda m: 1.0, float_metric=1.0, limit=limit
        )


def test_a_missing_recipe_or_evaluator_is_refused() -> None:
    model, _ = fragile_model()
    with pytest.raises(ValueError, match="quantize=... and/or prune="):
        layer_sensitivity(model, evaluate=lambda m: 1.0, float_metric=1.0)
    with pytest.raises(ValueError, match="evaluate must be a callable"):
        layer_sensitivity(model, quantize="int8", evaluate=0.5, float_metric=1.0)


@pytest.mark.parametrize("name", ["fc1", "blocks.0", "a*b", "odd?", "x[0]", ""])
def test_literal_patterns_match_exactly_their_name(name) -> None:
    pattern = literal_pattern(name)
    assert fnmatch.fnmatchcase(name, pattern)
    for other in ("fc10", "blocks.00", "aXb", "odd!", "x0", "y"):
        if other != name:
            assert not fnmatch.fnmatchcase(other, pattern)


def test_a_time_budget_stops_before_the_next_layer_and_says_so() -> None:
    model, data = fragile_model()
    ticks = iter(range(100))  # each reading of the clock one second later

    result = layer_sensitivity(
        model,
        quantize="int6",
        evaluate=lambda m: evaluate(m, data),
        float_metric=1.0,
        max_seconds=2,
        clock=lambda: float(next(ticks)),
    )
    # started at 0; the 2nd layer starts at 1 < 2; the 3rd would start at 2: stopped
    assert result.evaluations == 2 and len(result.skipped) == 1 and result.timed_out
    assert "stopped early by the time budget (--compress-sensitivity-seconds): 1 layers" in (
        result.summary()
    )
    assert result.to_dict()["timed_out"] is True
    unbounded = layer_sensitivity(
        model, quantize="int6", evaluate=lambda m: evaluate(m, data), float_metric=1.0
    )
    assert unbounded.evaluations == 3 and not unbounded.timed_out


def deep_model(layers: int = 8) -> tuple[nn.Module, list]:
    """A stack of ``layers`` Linear layers (16 wide), labelled by itself (100 % accuracy)."""
    stack: list[nn.Module] = []
    for index in range(layers):
        stack += [nn.Linear(16, 16 if index < layers - 1 else 4), nn.ReLU()]
    model = seeded(nn.Sequential(*stack[:-1]), seed=5)
    inputs = torch.randn(512, 16, generator=torch.Generator().manual_seed(6))
    return model, classification_batches(model, inputs, batch_size=128)


class CountedForward:
    """Counts the float model's own forward passes (the proxy's), apart from evaluations."""

    def __init__(self, model: nn.Module) -> None:
        self.calls = 0
        self.model = model
        model.register_forward_hook(self.hook)

    def hook(self, module: nn.Module, *_: object) -> None:
        # copies share the hook (a shallow clone's tables hold the same one): count the
        # passes of the float model itself
        if module is self.model:
            self.calls += 1


def test_every_layer_is_ranked_by_the_proxy_and_only_the_top_few_are_evaluated() -> None:
    model, data = deep_model(layers=8)
    forwards, recorder = CountedForward(model), Recorder(data)
    result = layer_sensitivity(
        model, quantize="int3", evaluate=recorder, float_metric=1.0, proxy_data=data
    )
    # 8 layers ranked by one short pass of the float model; 3 (the default cap) evaluated
    assert len(result.proxied) == 8 and forwards.calls == PROXY_BATCHES
    assert result.evaluations == len(recorder.models) == DEFAULT_LIMIT == 3
    errors = [entry.error for entry in result.proxied]
    assert errors == sorted(errors, reverse=True) and errors[-1] > 0
    proxy_order = [entry.layer for entry in result.proxied]
    assert set(result.ranked) == set(proxy_order[:3]) and result.skipped == tuple(proxy_order[3:])
    # the real drops, measured here layer by layer: the message names the three largest
    drops = {}
    for name in result.ranked:
        alone = compress_model(model, quantize=QuantSpec(bits=3, include=(name,)))
        drops[name] = 1.0 - evaluate(alone, data)
    assert {e.layer: e.drop for e in result.layers} == pytest.approx(drops)
    top3 = sorted(drops, key=lambda name: -drops[name])[:SHOWN_IN_MESSAGE]
    named = re.findall(r"(\d+) \(-[\d.]+ pp alone\)", result.summary())
    assert named == [name for name in top3 if drops[name] > 0]
    assert result.summary().endswith("; 5 more layers ranked by output error only, not measured")
    table = result.table().splitlines()
    assert table[0].split()[-2:] == ["output", "error"]
    assert sum("proxy only" in row for row in table) == 5
    assert result.to_dict()["ranked_by"] == "proxy"


class SilencedBranch(nn.Module):
    """A classifier (``main`` -> ``head``) beside a branch (``side``) whose output a
    threshold silences: ``relu(side(x) - 100)`` is zero for every input, so nothing
    ``side`` does reaches the prediction. ``side`` is fragile under quantization (a huge
    weight on an input that is always zero, as ``fragile_model``'s fc1)."""

    def __init__(self) -> None:
        super().__init__()
        self.main, self.head, self.side = nn.Linear(16, 32), nn.Linear(32, 4), nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.main(x))) + torch.relu(self.side(x) - 100.0)


def test_the_proxy_can_rank_a_harmless_layer_above_a_harmful_one_a_documented_limit() -> None:
    """The proxy sees a layer's own output error, not what the model makes of it. Here
    ``side``'s output is ruined (the largest error) yet harmless, while the classifier's
    layers, whose errors are smaller, cost accuracy. Measuring only the proxy's top layer
    misses them; measuring every layer (limit=None) names them."""
    model = seeded(SilencedBranch(), seed=2)
    with torch.no_grad():
        model.side.weight[:, 0] = 50.0
    inputs = torch.randn(512, 16, generator=torch.Generator().manual_seed(3))
    inputs[:, 0] = 0.0
    data = classification_batches(model, inputs, batch_size=128)

    def blame(limit: int | None):
        return layer_sensitivity(
            model,
            quantize="int2",
            evaluate=lambda m: evaluate(m, data),
            float_metric=1.0,
            limit=limit,
            proxy_data=data,
        )

    capped, full = blame(1), blame(None)
    assert capped.proxied[0].layer == "side" and capped.ranked == ("side",)
    assert capped.harmful() == ()  # what the capped run can say: none hurts alone
    drops = {entry.layer: entry.drop for entry in full.layers}
    assert drops["side"] == 0.0 and max(drops["main"], drops["head"]) > 0.01
    assert full.harmful()[0].layer in ("main", "head")


def test_a_result_reads_back_from_its_json_and_anything_else_is_refused() -> None:
    model, data = deep_model(layers=4)
    result = layer_sensitivity(
        model, quantize="int3", evaluate=lambda m: evaluate(m, data), float_metric=1.0,
        limit=2, proxy_data=data,
    )  # fmt: skip
    document = json.loads(json.dumps(result.to_dict()))
    assert SensitivityResult.from_dict(document) == result
    broken = [
        {**document, "layers": [{**document["layers"][0], "drop": "big"}]},
        {**document, "timed_out": 1},
        {**document, "evaluations": 7},  # disagrees with its layers
        {**document, "extra": 1},
        {key: value for key, value in document.items() if key != "proxies"},
        [],
        None,
    ]
    assert [SensitivityResult.from_dict(value) for value in broken] == [None] * len(broken)
