"""Train/eval flags: put every module's own flag back after a block, whatever happens in it.

``model.eval()`` and ``model.train()`` set one flag on every submodule, which loses a model
whose modules were deliberately in different modes (a frozen BatchNorm in a model being
fine-tuned). Everything in pytest-compress that switches modes does it through these
context managers, which restore each module's flag exactly, also when the block raises.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from torch import nn


class ModeSnapshot:
    """Every module's ``training`` flag at one moment, kept by module and by qualified name."""

    def __init__(self, model: nn.Module) -> None:
        self._flags = [(name, module, module.training) for name, module in model.named_modules()]

    def restore(self) -> None:
        """Give every module of the snapshot its flag back."""
        for _, module, training in self._flags:
            module.training = training

    def apply_by_name(self, model: nn.Module) -> None:
        """Give each module of ``model`` the flag of the module of the same name in the snapshot.

        For a model that replaced the snapshot's one (a recovery function may return a new
        model); modules without a namesake keep their own flag.
        """
        by_name = {name: training for name, _, training in self._flags}
        for name, module in model.named_modules():
            module.training = by_name.get(name, module.training)


@contextmanager
def preserved_modes(model: nn.Module) -> Iterator[ModeSnapshot]:
    """Restore every module's own train/eval flag when the block ends, also on an exception."""
    snapshot = ModeSnapshot(model)
    try:
        yield snapshot
    finally:
        snapshot.restore()


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """``model`` in eval mode for the block; each module's own flag comes back afterwards."""
    with preserved_modes(model):
        model.eval()
        yield model


@contextmanager
def train_mode(model: nn.Module) -> Iterator[nn.Module]:
    """``model`` in train mode for the block; each module's own flag comes back afterwards."""
    with preserved_modes(model):
        model.train()
        yield model
