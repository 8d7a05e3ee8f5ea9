"""Train/eval flags: every module's own flag comes back after a block, also when it raises."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from pytest_compress.engine.measure import evaluate, model_metric
from pytest_compress.engine.state import eval_mode, preserved_modes, train_mode
from tests.models import mlp, seeded


def mixed() -> nn.Module:
    """A model whose modules are deliberately in different modes."""
    model = nn.Sequential(nn.Linear(4, 4), nn.Sequential(nn.BatchNorm1d(4), nn.Dropout()))
    model.train()
    model[1][0].eval()
    model[0].eval()
    return model


def flags(model: nn.Module) -> list[tuple[str, bool]]:
    return [(name, module.training) for name, module in model.named_modules()]


@pytest.mark.parametrize("manager", [preserved_modes, eval_mode, train_mode])
def test_each_modules_own_flag_comes_back(manager) -> None:
    model = mixed()
    before = flags(model)
    with manager(model):
        model[1].train()
        model[1][1].eval()
    assert flags(model) == before


@pytest.mark.parametrize("manager", [preserved_modes, eval_mode, train_mode])
def test_the_flags_come_back_when_the_block_raises(manager) -> None:
    model = mixed()
    before = flags(model)
    with pytest.raises(RuntimeError, match="boom"), manager(model):
        model.train()
        raise RuntimeError("boom")
    assert flags(model) == before


def test_eval_and_train_mode_set_every_module_inside_the_block() -> None:
    model = mixed()
    with eval_mode(model):
        assert not any(training for _, training in flags(model))
    with train_mode(model):
        assert all(training for _, training in flags(model))


def test_a_snapshot_can_be_given_to_a_model_that_replaced_the_original() -> None:
    model, other = mixed(), mixed()
    other.train()
    with preserved_modes(model) as modes:
        pass
    modes.apply_by_name(other)
    assert flags(other) == flags(model)


def test_evaluate_restores_the_flags_when_the_metric_raises() -> None:
    model = seeded(mlp())
    model.train()
    model[0].eval()
    before = flags(model)

    @model_metric
    def broken(model: nn.Module, data: object) -> float:
        assert not model.training
        raise RuntimeError("metric failed")

    with pytest.raises(RuntimeError, match="metric failed"):
        evaluate(model, [torch.zeros(1)], broken)
    assert flags(model) == before
