"""The check runner, pytest-free: one object per session, typed checks in, results out."""

from __future__ import annotations

import copy

import torch
from torch import nn

from pytest_compress.budgets import Budgets
from pytest_compress.checks.request import Adjustments, Check, CheckInputs, Recipe
from pytest_compress.checks.runner import CheckRunner
from pytest_compress.engine import record
from pytest_compress.engine.apply import compress_model
from pytest_compress.engine.specs import PruneSpec, QuantSpec
from pytest_compress.fileformat.container import compressed_size
from tests.models import classification_batches, mlp, seeded


class Counting(nn.Module):
    """Counts forward passes of the model it wraps (copies count separately)."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.inner(x)


GENERATOR = torch.Generator().manual_seed(0)


def runner() -> CheckRunner:
    return CheckRunner(device="cpu", cache_mb=64, sensitivity_limit=None, results=None)


def top1(model: nn.Module, batches: list) -> float:
    """Top-1 accuracy in plain torch, independent of the engine's evaluate."""
    model.eval()
    with torch.no_grad():
        right = sum(int((model(x).argmax(1) == y).sum()) for x, y in batches)
    return right / sum(len(y) for _, y in batches)


def test_a_check_measures_what_plain_torch_measures_and_leaves_the_model_alone() -> None:
    model = seeded(mlp())
    data = classification_batches(model, torch.randn(256, 16, generator=GENERATOR))
    before = copy.deepcopy(model.state_dict())
    check = Check(Recipe(QuantSpec(bits=4)), Budgets(max_accuracy_drop=0.99))
    result = runner().run(check, CheckInputs(model, data, "m", "d"))
    expected = compress_model(model, quantize=QuantSpec(bits=4))
    assert result.float_metric == top1(model, data)
    assert result.compressed_metric == top1(expected, data)
    assert result.compressed_size == compressed_size(expected)
    assert result.passed and result.recipe == "int4 per-channel"
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_k_checks_of_one_model_cost_k_plus_one_evaluations() -> None:
    model = Counting(seeded(mlp()))
    data = classification_batches(model, torch.randn(256, 16, generator=GENERATOR))
    model.calls = 0  # labelling the data ran it once
    session = runner()
    inputs = CheckInputs(model, data, "m", "d")
    for bits in (8, 6, 4):
        session.run(Check(Recipe(QuantSpec(bits=bits)), Budgets(max_size_ratio=1.0)), inputs)
    # the float model is evaluated once; each compressed copy counts on its own
    assert model.calls == len(data)


def test_a_check_puts_each_quantized_weight_through_one_grid_check(monkeypatch) -> None:
    # the file size and the invariant gate ask the same question of the same weights
    model = seeded(mlp())
    data = classification_batches(model, torch.randn(256, 16, generator=GENERATOR))
    checks = []
    real = record.quantize_checked

    def counted(*args, **kwargs):
        if kwargs.get("check", True):  # a grid check, not codes already known on it
            checks.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(record, "quantize_checked", counted)
    check = Check(Recipe(QuantSpec(bits=4)), Budgets(max_accuracy_drop=0.99))
    result = runner().run(check, CheckInputs(model, data, "m", "d"))
    layers = sum(isinstance(module, nn.Linear) for module in model.modules())
    assert len(checks) == layers and result.broken_invariants == ()
    assert result.compressed_size == compressed_size(compress_model(model, quantize="int4"))


def test_a_search_is_a_series_of_ordinary_checks_and_reports_its_choice() -> None:
    model = seeded(mlp())
    data = classification_batches(model, torch.randn(256, 16, generator=GENERATOR))
    check = Check(Recipe(), Budgets(max_accuracy_drop=0.05), Adjustments(search="sparsity"))
    result = runner().run(check, CheckInputs(model, data, "m", "d"))
    assert result.search is not None and result.search.passed
    assert result.prune == PruneSpec(amount=result.search.chosen, scope="global")
    assert result.accuracy_drop <= 0.05


def test_each_copy_after_the_first_is_made_in_the_memory_of_the_last_measured(
    monkeypatch,
) -> None:
    """The runner gives a measured copy's memory back (``spares.py``): checks of one model,
    a search's trials included, copy into it instead of fresh pages; never the user's."""
    from pytest_compress.engine import apply

    made: list[set[int]] = []
    copy_model = apply.copy_model

    def recording(model: nn.Module) -> nn.Module:
        copied = copy_model(model)
        tensors = [*copied.parameters(), *copied.buffers()]
        made.append({t.untyped_storage().data_ptr() for t in tensors})
        return copied

    monkeypatch.setattr(apply, "copy_model", recording)
    model = seeded(mlp())
    data = classification_batches(model, torch.randn(256, 16, generator=GENERATOR))
    session = runner()
    inputs = CheckInputs(model, data, "m", "d")
    budgets = Budgets(max_accuracy_drop=0.05)
    session.run(Check(Recipe(QuantSpec(bits=8)), budgets), inputs)
    session.run(Check(Recipe(prune=PruneSpec(amount=0.5)), budgets), inputs)
    session.run(Check(Recipe(), budgets, Adjustments(search="sparsity")), inputs)
    assert len(made) >= 5
    assert all(later == made[0] for later in made[1:])
    users = [*model.parameters(), *model.buffers()]
    assert not made[0] & {t.untyped_storage().data_ptr() for t in users}


def search_run(budgets: Budgets, session: CheckRunner | None = None, model=None):
    model = model if model is not None else Counting(seeded(mlp()))
    inputs = torch.randn(256, 16, generator=torch.Generator().manual_seed(5))
    data = classification_batches(model, inputs)  # the same in every call: cached alike
    model.calls = 0
    check = Check(Recipe(), budgets, Adjustments(search="sparsity"))
    session = session if session is not None else runner()
    return session.run(check, CheckInputs(model, data, "m", "d")), model


def sizes_counted(monkeypatch) -> list[int]:
    from pytest_compress.checks import runner as runner_module

    counted: list[int] = []

    def counting(model: nn.Module) -> int:
        counted.append(compressed_size(model))
        return counted[-1]

    monkeypatch.setattr(runner_module, "compressed_size", counting)
    return counted


def test_a_search_without_a_size_budget_counts_only_the_passing_trials_files(monkeypatch) -> None:
    counted = sizes_counted(monkeypatch)
    result, _ = search_run(Budgets(max_accuracy_drop=0.05))
    search = result.search
    assert search is not None and search.passed
    failed = [step for step in search.trail if not step.passed]
    assert failed and all(step.size is None for step in failed)
    assert all(step.size is not None for step in search.trail if step.passed)
    assert len(counted) == sum(step.passed for step in search.trail)
    chosen = compress_model(Counting(seeded(mlp())), prune=result.prune)
    assert result.compressed_size == compressed_size(chosen)
    assert "not counted" in search.trail_table()


def test_a_size_budget_has_every_trial_counted(monkeypatch) -> None:
    counted = sizes_counted(monkeypatch)
    result, _ = search_run(Budgets(max_accuracy_drop=0.05, max_size_ratio=0.9))
    assert result.search is not None
    assert all(step.size is not None for step in result.search.trail)
    assert len(counted) == result.search.evaluations


def test_when_no_trial_passes_the_closest_is_counted_without_another_evaluation(
    monkeypatch,
) -> None:
    from pytest_compress.checks import runner as runner_module

    counted = sizes_counted(monkeypatch)
    evaluations = []
    evaluate = runner_module._CheckRun.evaluate

    def counting(run, model):
        evaluations.append(model)
        return evaluate(run, model)

    monkeypatch.setattr(runner_module._CheckRun, "evaluate", counting)
    # no sparsity holds an impossible drop: the closest (least compression) is reported
    result, _ = search_run(Budgets(max_relative_drop=1e-9, min_sparsity=0.99))
    search = result.search
    assert search is not None and not search.passed
    assert search.closest is not None and search.closest.size == result.compressed_size
    assert all(step.size is None for step in search.trail if step is not search.closest)
    assert search.closest in search.trail
    assert len(counted) == 1  # the closest's file, once nothing passed
    assert result.compressed_size > 0 and result.size_ratio > 0
    expected = compress_model(Counting(seeded(mlp())), prune=result.prune)
    assert result.compressed_size == compressed_size(expected)
    assert len(evaluations) == search.evaluations  # counting it evaluated nothing more


def test_a_stored_unsized_trial_that_passes_now_is_measured_again_with_its_size() -> None:
    from pytest_compress.checks.cache import ResultCache
    from tests.checks.test_cache import DictStore

    store = DictStore()

    def session() -> CheckRunner:
        return CheckRunner(
            device="cpu", cache_mb=64, sensitivity_limit=None, results=ResultCache(store)
        )

    strict, _ = search_run(Budgets(max_accuracy_drop=0.001), session())
    assert strict.search is not None
    assert any(step.size is None for step in strict.search.trail)
    relaxed, model = search_run(Budgets(max_accuracy_drop=0.99), session())
    assert relaxed.search is not None and relaxed.search.passed
    assert all(step.size is not None for step in relaxed.search.trail if step.passed)
    # the first setting is both runs' (bisection starts mid-grid): stored unsized by the
    # strict run, it passes now and is counted from the cache, not evaluated again
    first = relaxed.search.trail[0]
    assert first.setting == strict.search.trail[0].setting and strict.search.trail[0].size is None
    assert first.result.cached and first.size is not None
    chosen = compress_model(Counting(seeded(mlp())), prune=relaxed.prune)
    assert relaxed.compressed_size == compressed_size(chosen)
