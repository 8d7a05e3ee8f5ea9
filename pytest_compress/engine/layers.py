"""Which layers of a model are compressible, and which of their axes mean what."""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import cast

import torch
from torch import nn
from torch.nn.utils import prune

from ..errors import ModelError
from .specs import PRESETS

_CONV_TRANSPOSE = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
COMPRESSIBLE_TYPES: tuple[type[nn.Module], ...] = (
    nn.Linear,
    nn.Conv1d,
    nn.Conv2d,
    nn.Conv3d,
    *_CONV_TRANSPOSE,
    nn.Embedding,
    nn.EmbeddingBag,
)
_EMBEDDINGS = (nn.Embedding, nn.EmbeddingBag)
COMPRESSIBLE_NAMES = (
    "Linear, Conv1d/2d/3d, ConvTranspose1d/2d/3d, Embedding, EmbeddingBag, and transformers' "
    "Conv1D (GPT-2's linear layers)"
)


def is_transformers_conv1d(module: nn.Module) -> bool:
    """transformers' ``Conv1D``: a Linear whose weight is stored (in, out), told by its
    class's name and package (the engine never imports transformers)."""
    return any(
        base.__name__ == "Conv1D" and base.__module__.startswith("transformers.")
        for base in type(module).__mro__
    )


def is_compressible(module: nn.Module) -> bool:
    """A layer type the engine compresses (its weight must still be a Parameter)."""
    return isinstance(module, COMPRESSIBLE_TYPES) or is_transformers_conv1d(module)


def _stores_in_out(module: nn.Module) -> bool:
    """Weights stored (in, out, ...): ConvTranspose and transformers' Conv1D."""
    return isinstance(module, _CONV_TRANSPOSE) or is_transformers_conv1d(module)


class WeightedModule(nn.Module):
    """A compressible layer's module as the type checker sees it: its weight is a Parameter.

    Never instantiated: ``compressible_layers`` checks the weight, then casts to it.
    """

    weight: nn.Parameter


@dataclass(frozen=True)
class Layer:
    """A compressible layer: its qualified name, the module, and its weight's axes."""

    name: str
    module: WeightedModule

    @property
    def weight_name(self) -> str:
        return f"{self.name}.weight" if self.name else "weight"

    @property
    def output_axis(self) -> int:
        """The weight axis of output channels (ConvTranspose and transformers' Conv1D store
        weights as [in, out, ...])."""
        return 1 if _stores_in_out(self.module) else 0

    @property
    def input_axis(self) -> int:
        """The weight axis summed over in the layer's product (N:M groups run along it)."""
        weight = self.module.weight
        if weight.dim() < 2:
            return 0
        return 0 if _stores_in_out(self.module) else 1


def literal_pattern(name: str) -> str:
    """An fnmatch pattern matching exactly ``name`` (``*``, ``?`` and ``[`` escaped)."""
    return "".join(f"[{c}]" if c in "*?[" else c for c in name)


def preset_members(model: nn.Module, patterns: Sequence[str]) -> dict[str, str]:
    """The module names each preset among ``patterns`` stands for in ``model``, with the
    preset: ``{"embed": "@embeddings", "lm_head": "@head"}``.

    A module whose weight is tied to a member's (GPT-2's ``lm_head`` and ``wte``) is a
    member too: one tensor cannot be both float and compressed.
    """
    members: dict[str, str] = {}
    modules = dict(model.named_modules())
    for preset in patterns:
        if preset == "@embeddings":
            names = [n for n, m in modules.items() if isinstance(m, _EMBEDDINGS)]
        elif preset == "@head":
            names = [head] if (head := output_head(model)) is not None else []
        else:
            continue
        weights = {id(getattr(modules[n], "weight", None)) for n in names}
        for name, module in modules.items():
            if name in names or id(getattr(module, "weight", object())) in weights:
                members.setdefault(name, preset)
    return members


def expand_presets(model: nn.Module, patterns: Sequence[str]) -> tuple[str, ...]:
    """``patterns`` with each preset (``@embeddings``, ``@head``) replaced by the literal
    names of its modules in ``model``: a preset that matches nothing adds nothing."""
    if not any(p.startswith("@") for p in patterns):
        return tuple(patterns)
    members = preset_members(model, patterns)
    expanded = [p for p in patterns if not p.startswith("@")]
    expanded += [literal_pattern(name) for name in members]
    return tuple(expanded)


def output_head(model: nn.Module) -> str | None:
    """The name of the module that produces the model's outputs: a Hugging Face model's
    ``get_output_embeddings()``, else the last compressible layer registered (a
    ``Sequential``'s last layer, a classifier defined last)."""
    getter = getattr(model, "get_output_embeddings", None)
    head = getter() if callable(getter) else None
    if isinstance(head, nn.Module):
        for name, module in model.named_modules():
            if module is head:
                return name
    last = None
    for name, module in model.named_modules():
        if is_compressible(module) and isinstance(getattr(module, "weight", None), nn.Parameter):
            last = name
    return last


def selector(
    model: nn.Module, include: Sequence[str], exclude: Sequence[str]
) -> Callable[[str], bool]:
    """Whether a module name of ``model`` passes ``include`` and ``exclude``, presets
    resolved: an include made only of presets that match nothing selects nothing."""
    wanted, unwanted = expand_presets(model, include), expand_presets(model, exclude)
    if include and not wanted:
        return lambda name: False
    return lambda name: matches(name, wanted, unwanted)


def matches(name: str, include: Sequence[str], exclude: Sequence[str]) -> bool:
    """Whether a module name passes the include (any, when given) and exclude patterns."""
    if include and not any(fnmatch.fnmatchcase(name, p) for p in include):
        return False
    return not any(fnmatch.fnmatchcase(name, p) for p in exclude)


def compressible_layers(
    model: nn.Module, include: Sequence[str] = (), exclude: Sequence[str] = ()
) -> list[Layer]:
    """The selected compressible layers, each weight once even when tied between layers.

    ``include`` / ``exclude`` are fnmatch patterns on module names, or presets
    (``expand_presets``)."""
    refuse_reparametrized(model)
    selected = selector(model, include, exclude)
    seen: set[int] = set()
    layers = []
    for name, module in model.named_modules():
        weight = getattr(module, "weight", None)
        if not is_compressible(module) or not isinstance(weight, nn.Parameter):
            continue
        if id(weight) in seen or not selected(name):
            continue
        seen.add(id(weight))
        layers.append(Layer(name, cast(WeightedModule, module)))
    return layers


def require_layers(layers: list[Layer], include: Sequence[str], exclude: Sequence[str]) -> None:
    """Raise ``ModelError`` when nothing is left to compress."""
    if layers:
        return
    selection = ""
    if include or exclude:
        selection = f" matching include={list(include)} exclude={list(exclude)}"
    raise ModelError(
        f"the model has no compressible layer{selection}; compressible layers are "
        f"{COMPRESSIBLE_NAMES}"
    )


def skipped_layers(
    model: nn.Module, selected: set[str], presets: dict[str, str] | None = None
) -> dict[str, str]:
    """Every module holding a weight matrix (a floating parameter of 2 or more dimensions)
    that the recipe leaves uncompressed, by name, with why: a module type the engine does
    not compress (its matrices named when not ``weight``), a preset the recipe excludes
    (``presets``: module name -> preset, from ``preset_members``), or the recipe's own
    selection."""
    presets = presets or {}
    compressed = {id(getattr(model.get_submodule(name), "weight", None)) for name in selected}
    skipped = {}
    for name, module in model.named_modules():
        matrices = [
            label
            for label, value in module.named_parameters(recurse=False)
            if value.dim() >= 2 and value.is_floating_point() and id(value) not in compressed
        ]
        if not matrices:
            continue  # nothing left float here (a tied weight counts where it is compressed)
        shown = name or "(the model)"
        if is_compressible(module) and matrices == ["weight"] and name in presets:
            skipped[shown] = f"left float by the {presets[name]} preset ({PRESETS[presets[name]]})"
        elif is_compressible(module) and matrices == ["weight"]:
            skipped[shown] = "left out by the recipe's include/exclude (or keep_float)"
        else:
            which = "" if matrices == ["weight"] else f" ({', '.join(matrices)})"
            skipped[shown] = f"{type(module).__name__} is not a compressible layer type{which}"
    return skipped


def pruned_by_torch(module: nn.Module) -> list[str]:
    """The tensors of ``module`` that ``torch.nn.utils.prune`` re-parametrised (``x_orig``
    plus the buffer ``x_mask``), by name."""
    names = [name[: -len("_orig")] for name, _ in module.named_parameters(recurse=False)]
    return [
        name
        for name in names
        if isinstance(getattr(module, f"{name}_mask", None), torch.Tensor)
        and f"{name}_orig" in dict(module.named_parameters(recurse=False))
    ]


def fold_torch_pruning(model: nn.Module) -> list[str]:
    """Make every ``torch.nn.utils.prune`` re-parametrisation of ``model`` (a copy) a plain
    parameter holding its effective, masked value; the folded names, qualified."""
    folded = []
    for module_name, module in model.named_modules():
        for name in pruned_by_torch(module):
            prune.remove(module, name)
            folded.append(f"{module_name}.{name}" if module_name else name)
    return folded


def computed_weights(model: nn.Module) -> list[str]:
    """The compressible layers whose weight is a tensor but not a parameter: computed at run
    time from other tensors (``torch.nn.utils.parametrize``, ``torch.nn.utils.prune``,
    weight norm), by name."""
    return [
        name or "(the model)"
        for name, module in model.named_modules()
        if is_compressible(module)
        and isinstance(getattr(module, "weight", None), torch.Tensor)
        and not isinstance(getattr(module, "weight", None), nn.Parameter)
    ]


def refuse_reparametrized(model: nn.Module) -> None:
    """``ModelError`` naming the compressible layers whose weight is computed at run time.

    Compressing or counting such a layer without its weight would leave it out in silence,
    and sparsity and size would claim layers the recipe skipped.
    """
    found = computed_weights(model)
    if found:
        raise ModelError(
            f"layers {found} compute their weight at run time (torch.nn.utils.parametrize, "
            "torch.nn.utils.prune or weight norm), so it cannot be compressed or counted as "
            "it stands. Layers pruned with torch.nn.utils.prune are folded in the copy every "
            "recipe compresses; fold any other re-parametrisation into the model you give "
            "(e.g. torch.nn.utils.parametrize.remove_parametrizations(module, 'weight', "
            "leave_parametrized=True) on a copy), or exclude those layers"
        )
