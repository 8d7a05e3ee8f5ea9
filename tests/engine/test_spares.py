"""Spare tensors (``spares.py``): a measured copy's memory goes to the next deep copy.

A copy made from spares is the deep copy's equal (values, sharing, parameter types and
flags) and never shares memory with the user's model or with a copy still in use; memory
something else still sees is never taken back.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from pytest_compress.engine.apply import compress_model, copy_model
from pytest_compress.engine.spares import SpareTensors, reusing, sole_owners


class Tied(nn.Module):
    """A tied embedding, a buffer, a view held as an attribute and a frozen parameter."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(50, 16)
        self.hidden = nn.Linear(16, 16)
        self.head = nn.Linear(16, 50, bias=False)
        self.head.weight = self.embed.weight
        self.register_buffer("scale", torch.full((16,), 0.5))
        self.frozen = nn.Parameter(torch.randn(16), requires_grad=False)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.hidden(self.embed(tokens)) * self.scale + self.frozen))


def model() -> Tied:
    torch.manual_seed(0)
    return Tied().eval()


def pointers(m: nn.Module) -> set[int]:
    return {t.untyped_storage().data_ptr() for t in [*m.parameters(), *m.buffers()]}


def test_a_copy_into_spares_is_the_deep_copys_equal_in_the_spares_memory() -> None:
    user = model()
    spares = SpareTensors()
    measured = copy_model(user)
    given = pointers(measured)
    spares.give(measured)
    assert spares.nbytes == sum(t.nbytes for t in sole_owners(measured))
    del measured
    with reusing(spares):
        again = copy_model(user)
    expected = copy.deepcopy(user)
    assert spares.nbytes == 0  # every spare was used
    assert pointers(again) == given and not pointers(again) & pointers(user)
    assert again.head.weight is again.embed.weight  # the tie survives
    for (name, mine), (_, theirs) in zip(
        again.state_dict(keep_vars=True).items(),
        expected.state_dict(keep_vars=True).items(),
        strict=True,
    ):
        assert type(mine) is type(theirs), name
        assert mine.requires_grad == theirs.requires_grad, name
        assert torch.equal(mine, theirs), name
    tokens = torch.randint(0, 50, (4, 7))
    assert torch.equal(again(tokens), user(tokens))


def test_memory_something_else_still_sees_is_not_taken_back() -> None:
    user = model()
    spares = SpareTensors()
    measured = copy_model(user)
    kept_alive = measured.hidden.weight  # a reference outside the copy's modules
    view = measured.hidden.bias[2:]  # a view of another tensor's storage
    spares.give(measured)
    with reusing(spares):
        again = copy_model(user)
    assert kept_alive.untyped_storage().data_ptr() not in pointers(again)
    assert view.untyped_storage().data_ptr() not in pointers(again)
    assert torch.equal(kept_alive, user.hidden.weight) and torch.equal(view, user.hidden.bias[2:])


def test_spares_are_only_used_within_reusing_and_hold_one_copy_at_most() -> None:
    user = model()
    spares = SpareTensors()
    for _ in range(3):
        spares.give(copy_model(user))
    one_copy = sum(t.nbytes for t in sole_owners(user))
    assert spares.nbytes == one_copy
    before = spares.nbytes
    outside = copy_model(user)  # no reusing(): fresh memory
    assert spares.nbytes == before
    del outside
    other = nn.Linear(3, 3)
    spares.keep_only(other)  # another model's check: nothing here fits it
    assert spares.nbytes == 0


@pytest.mark.parametrize(
    "recipe", [{"quantize": "int8"}, {"prune": 0.5}, {"quantize": "int4", "prune": 0.8}]
)
def test_compressing_into_spares_gives_the_same_model_and_leaves_the_user_model(recipe) -> None:
    user = model()
    state = copy.deepcopy(user.state_dict())
    spares = SpareTensors()
    spares.give(compress_model(user, quantize="int4"))  # stale values in the spares
    with reusing(spares):
        reused = compress_model(user, **recipe)
    fresh = compress_model(user, **recipe)
    for key, value in fresh.state_dict().items():
        assert torch.equal(reused.state_dict()[key], value), key
    for key, value in user.state_dict().items():
        assert torch.equal(value, state[key]), key
