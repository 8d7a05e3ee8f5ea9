"""Spare tensors: the memory of a compressed copy the check runner is done with, handed
to its next deep copy of the same model.

A deep copy's tensors are new memory, which the system hands out a page at a time and
zeroed; glibc gives a block that large back to the system as soon as it is freed, so every
copy pays again. On a 25 M-parameter model those page faults are 0.03 s of a 0.04 s copy,
and a check run copies the model once per recipe and per search trial. The runner knows
when it is done with a copy: it gives the copy's tensors back (``SpareTensors.give``), and
within ``reusing`` the next ``copy_model`` copies the user's values into them (a memcpy).

Only memory nothing else can see is taken back: a plain CPU tensor or parameter of the
copy, held by the copy's modules alone (Python's reference count) and sharing its storage
with no other tensor (torch's use count). The pool holds at most one copy's worth, of the
model given last.
"""

from __future__ import annotations

import sys
from collections import Counter, deque
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

import torch
from torch import nn

Key = tuple[tuple[int, ...], tuple[int, ...], torch.dtype]


def _key(t: torch.Tensor) -> Key:
    return tuple(t.shape), t.stride(), t.dtype


def plain(t: torch.Tensor) -> bool:
    """A parameter or tensor of torch's own type, with nothing a deep copy would carry
    beside its values (a subclass, a gradient, attributes, conjugate or negative bits)."""
    if t.layout != torch.strided:
        return False
    if type(t) is nn.Parameter:
        return t.grad is None
    return (
        type(t) is torch.Tensor
        and not t.requires_grad
        and t.grad is None
        and not t.__dict__
        and not t.is_conj()
        and not t.is_neg()
    )


def sole_owners(model: nn.Module) -> list[torch.Tensor]:
    """The model's plain, non-empty parameters and buffers whose storage no other of its
    tensors shares (a tensor tied by identity counts once): each can get a twin of its own
    without breaking a sharing the model relies on."""
    named = [
        *model.named_parameters(remove_duplicate=False),
        *model.named_buffers(remove_duplicate=False),
    ]
    unique = list({id(t): t for _, t in named}.values())
    owners: Counter = Counter(
        (t.device, t.untyped_storage().data_ptr()) for t in unique if t.numel() and plain(t)
    )
    return [
        t
        for t in unique
        if t.numel() and plain(t) and owners[(t.device, t.untyped_storage().data_ptr())] == 1
    ]


def twin(t: torch.Tensor, data: torch.Tensor) -> torch.Tensor:
    """What ``copy.deepcopy`` makes of ``t`` (a ``plain`` one), holding ``data``."""
    if type(t) is nn.Parameter:  # as Parameter.__deepcopy__ builds it
        return nn.Parameter(data, t.requires_grad)
    return data


def _holders(t: torch.Tensor) -> int:
    """References to ``t`` beyond the modules' own tables, as ``_probe`` calibrates."""
    return sys.getrefcount(t)


def _probe() -> int:
    """What ``_holders`` reads for a parameter held once by one module and by the caller's
    list: anything more is a holder outside the copy. Measured, not assumed, since the
    interpreter's own counting differs between versions."""
    module = nn.Linear(1, 1)
    held = [module.weight]
    return _holders(held[0]) - 1  # minus the module's table


class SpareTensors:
    """Tensors of discarded copies, by shape, strides and dtype, oldest first."""

    def __init__(self) -> None:
        self._spare: dict[Key, deque[torch.Tensor]] = {}
        self._order: deque[tuple[Key, int]] = deque()
        self._baseline = _probe()

    @property
    def nbytes(self) -> int:
        return sum(t.nbytes for tensors in self._spare.values() for t in tensors)

    def give(self, copy: nn.Module) -> None:
        """Take back the memory of ``copy``, which its holder is done with: each tensor the
        copy alone holds. Older spares go, so the pool holds this copy's worth."""
        tables: Counter = Counter()
        for module in copy.modules():
            for table in (module._parameters, module._buffers):
                tables.update(id(t) for t in table.values() if t is not None)
        taken = []
        for t in sole_owners(copy):
            if t.device.type != "cpu" or t.is_sparse:
                continue
            storage = t.untyped_storage()
            # the tensor alone holds its storage (and ``storage`` here): no view elsewhere
            if torch._C._storage_Use_Count(storage._cdata) != 2 or storage.nbytes() != t.nbytes:
                continue
            del storage
            # the modules' tables hold it; the list from sole_owners and ``t`` itself too
            if _holders(t) - tables[id(t)] != self._baseline + 1:
                continue
            taken.append(t.detach())
        for t in taken:
            key = _key(t)
            self._spare.setdefault(key, deque()).append(t)
            self._order.append((key, id(t)))
        budget = sum(t.nbytes for t in taken)
        while self._order and self.nbytes > budget:
            key, _ = self._order.popleft()
            self._spare[key].popleft()
            if not self._spare[key]:
                del self._spare[key]

    def take(self, like: torch.Tensor) -> torch.Tensor | None:
        """A spare tensor of ``like``'s shape, strides and dtype (its contents stale), or None."""
        if like.device.type != "cpu":
            return None
        key = _key(like)
        spares = self._spare.get(key)
        if not spares:
            return None
        t = spares.pop()
        if not spares:
            del self._spare[key]
        self._order = deque(entry for entry in self._order if entry[1] != id(t))
        return t

    def keep_only(self, model: nn.Module) -> None:
        """Let go of every spare no tensor of ``model`` could use (another model's)."""
        wanted = {_key(t) for t in sole_owners(model)}
        for key in [key for key in self._spare if key not in wanted]:
            del self._spare[key]
        self._order = deque(entry for entry in self._order if entry[0] in self._spare)

    def clear(self) -> None:
        self._spare.clear()
        self._order.clear()


_SPARES: ContextVar[SpareTensors | None] = ContextVar("pytest_compress_spares", default=None)


@contextmanager
def reusing(spares: SpareTensors | None) -> Iterator[None]:
    """Within the block, ``copy_model`` copies into ``spares`` where it can."""
    token = _SPARES.set(spares)
    try:
        yield
    finally:
        _SPARES.reset(token)


def copy_twins(model: nn.Module) -> dict[int, torch.Tensor]:
    """For ``copy.deepcopy``'s memo: twins of ``model``'s tensors, holding their values in
    spare memory, where ``reusing`` gave spares that fit (empty without)."""
    spares = _SPARES.get()
    if spares is None:
        return {}
    twins = {}
    with torch.no_grad():
        for t in sole_owners(model):
            data = spares.take(t)
            if data is not None:
                twins[id(t)] = twin(t, data.copy_(t.detach()))
    return twins
