"""Which copy a check compresses: a deep copy, or the low-memory mode's shallow clone.

A deep copy doubles the model in memory; the low-memory mode (``engine/lazy.py``) holds
only the compressed weights, packed. ``auto`` picks the low-memory mode when the model's
bytes exceed a share of the memory the machine has available as the check starts, so a
model that would not fit twice is checked anyway, and a small one keeps the faster path.
Both modes give the same numbers (sizes, metrics, sparsity), bit for bit.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..units import format_size

if TYPE_CHECKING:  # the plugin reads the modes at start-up, before torch is imported
    from torch import nn

LOW_MEMORY_MODES = ("auto", "on", "off")
DEFAULT_LOW_MEMORY = "auto"
# Above half of the available memory a deep copy leaves too little for the evaluation.
DEFAULT_LOW_MEMORY_SHARE = 0.5


@dataclass(frozen=True)
class CopyMode:
    """The copy a model's checks compress, and why (for the report)."""

    low_memory: bool
    why: str


def tensor_bytes(model: nn.Module) -> int:
    """Bytes of the model's parameters and buffers, each tensor counted once."""
    seen: dict[int, int] = {}
    for tensor in (*model.parameters(), *model.buffers()):
        seen[id(tensor)] = tensor.numel() * tensor.element_size()
    return sum(seen.values())


def available_memory() -> int | None:
    """Bytes the machine can still give a process (``MemAvailable``), None if unknown."""
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def choose_copy_mode(
    model: nn.Module, mode: str, share: float, available: int | None = None
) -> CopyMode:
    """``on``/``off`` as given; ``auto``: low-memory when the model's bytes exceed
    ``share`` of ``available`` (the machine's available memory when not given)."""
    if mode == "on":
        return CopyMode(True, "--compress-low-memory=on")
    if mode == "off":
        return CopyMode(False, "--compress-low-memory=off")
    size = tensor_bytes(model)
    available = available_memory() if available is None else available
    if available is None:
        return CopyMode(False, "the available memory is unknown")
    over = size > share * available
    relation = "over" if over else "within"
    return CopyMode(
        over,
        f"the model's {format_size(size)} is {relation} {share:.0%} of the "
        f"{format_size(available)} available",
    )


def describe(mode: CopyMode, model_label: str) -> str:
    """The report's line about a model checked in the low-memory mode."""
    return (
        f"low-memory mode for {model_label} ({mode.why}): compressed weights held packed "
        "and dequantized as each layer runs"
    )
