"""The low-memory mode's compressed copy: a shallow clone whose compressed weights are held
packed and turned into values only while a torch operation reads them.

A deep copy costs the model's bytes again, which a 7 B-parameter model cannot spare on a
24 GiB runner. ``shallow_clone`` instead copies the module tree only: every module is a
new object with its own parameter, buffer, submodule and hook tables, while every tensor
is the user's own (buffers are cloned: a forward pass may update them in place). The
recipe then replaces, in the clone's tables only, each weight it compresses by a
``LazyWeight``:

- ``RoundedValues``: the user's weight (or a masked one) and the mapping that rounds it
  (scales and zero points, or a float format): round-to-nearest and MSE-chosen scales
  make the codes a function of the shared weight, recomputed on use;
- ``PackedCodes``: integer codes (two per byte up to 4 bits) with the mapping's scales,
  for GPTQ, whose codes are not a function of the weight alone;
- ``MaskedValues``: the user's weight and a bit mask of the weights pruning kept.

A ``LazyWeight`` is a tensor subclass (``__torch_dispatch__``, as torchao's quantized
tensors are): any operation on it, a layer's ``F.linear`` or ``count_nonzero`` alike,
runs on its values, built for that operation and released after it. So a layer's float
weight exists only while the layer runs, and the clone holds only scales, masks (a bit
per weight) and GPTQ's codes (a byte per weight at 5-8 bits, half a byte up to 4) beyond
the model itself. The values are the deep-copy mode's, bit for bit: the same codes
through the same kernels.

``detach`` (which ``state_dict`` calls) and device moves keep a weight packed; the file
format reads its codes directly (``fileformat/container.py``).
"""

from __future__ import annotations

import copy
import dataclasses
import math
from typing import Any, cast

import torch
from torch import nn
from torch.utils._pytree import tree_map

from ..errors import ModelError
from .floats import FloatParams, cast_elements, cast_to_format
from .quant import QuantizedTensor, dequantize, fake_quantize_with
from .record import QuantParams

_ALIAS_OPS = (torch.ops.aten.detach.default, torch.ops.aten.alias.default)


class LazyWeight(torch.Tensor):
    """A weight held packed; every torch operation sees its values (``values()``)."""

    shown_as = "lazy"

    @staticmethod
    def __new__(cls, shape: torch.Size, dtype: torch.dtype, device: torch.device) -> LazyWeight:
        made = torch.Tensor._make_wrapper_subclass(
            cls, shape, dtype=dtype, device=device, requires_grad=False
        )
        return made

    # only __torch_dispatch__ decides what an operation sees
    __torch_function__ = torch._C._disabled_torch_function_impl  # type: ignore[assignment]

    def values(self) -> torch.Tensor:
        """The weight's values: a new plain tensor of its shape and dtype."""
        raise NotImplementedError

    def packed_bytes(self) -> int:
        """Bytes this weight holds (its packed tensors), for memory accounting."""
        raise NotImplementedError

    def key(self) -> tuple:
        """What makes two aliases (``detach``, ``state_dict``) one weight."""
        raise NotImplementedError

    def moved(self, device: torch.device) -> LazyWeight:
        raise NotImplementedError

    def alias(self) -> LazyWeight:
        return self.moved(self.device)

    @classmethod
    def __torch_dispatch__(  # type: ignore[override]
        cls, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None
    ) -> Any:
        kwargs = kwargs or {}
        if func in _ALIAS_OPS:
            return args[0].alias()
        _refuse_writes(func, args, kwargs)
        if func is torch.ops.aten._to_copy.default and _only_device(args[0], kwargs):
            return args[0].moved(torch.device(kwargs["device"]))
        values = tree_map(values_of, (args, kwargs))
        return func(*values[0], **values[1])

    def __deepcopy__(self, memo: dict) -> LazyWeight:
        copied = self.alias()
        for name, value in vars(self).items():
            setattr(copied, name, copy.deepcopy(value, memo))
        return copied

    def __reduce_ex__(self, protocol: Any) -> Any:
        # pickled (torch.save) as its values: a file anyone's torch can read
        return self.values().__reduce_ex__(protocol)

    def __repr__(self) -> str:  # type: ignore[override]
        return (
            f"{type(self).__name__}(shape={tuple(self.shape)}, dtype={self.dtype}, "
            f"{self.shown_as}, {self.packed_bytes()} bytes held)"
        )


def _refuse_writes(func: Any, args: tuple, kwargs: dict) -> None:
    """``ModelError`` for an operation that would write into a lazy weight: it would write
    into values built for that operation alone and lost after it, changing nothing."""
    for index, argument in enumerate(func._schema.arguments):
        written = argument.alias_info is not None and argument.alias_info.is_write
        target = args[index] if index < len(args) else kwargs.get(argument.name)
        if written and isinstance(target, LazyWeight):
            raise ModelError(
                f"{func._schema.name} writes into a weight the low-memory mode holds packed "
                "(its values exist only while an operation reads them); modify the model "
                "before the check, or run it with --compress-low-memory=off"
            )


def values_of(x: Any) -> Any:
    """``x``'s values when it is a lazy weight (built once, for every use that follows),
    else ``x`` itself."""
    return x.values() if isinstance(x, LazyWeight) else x


def _only_device(weight: LazyWeight, kwargs: dict) -> bool:
    """A ``.to(device)`` that changes nothing but the device (a copy of packed tensors)."""
    allowed = {"device", "dtype", "layout", "non_blocking", "memory_format"}
    return (
        "device" in kwargs
        and set(kwargs) <= allowed
        and kwargs.get("dtype") in (None, weight.dtype)
        and kwargs.get("layout") in (None, torch.strided)
        and kwargs.get("memory_format") in (None, torch.preserve_format)
    )


class PackedCodes(LazyWeight):
    """Integer codes (``codes - qmin``: uint8, two per byte up to 4 bits; uint16 above 8)
    and their ``QuantParams``."""

    shown_as = "integer codes"
    packed: torch.Tensor
    params: QuantParams
    nibbles: bool

    @staticmethod
    def __new__(
        cls, packed: torch.Tensor, params: QuantParams, shape: torch.Size, dtype: torch.dtype
    ) -> PackedCodes:
        made = cast(PackedCodes, LazyWeight.__new__(cls, shape, dtype, packed.device))
        made.packed, made.params = packed, params
        made.nibbles = params.qmax - params.qmin < 16
        return made

    @classmethod
    def of(cls, codes: torch.Tensor, params: QuantParams, dtype: torch.dtype) -> PackedCodes:
        """``codes`` (``codes - qmin``, uint8 or uint16, the weight's shape) packed."""
        packed = _pack_nibbles(codes) if params.qmax - params.qmin < 16 else codes
        return cls(packed, params, codes.shape, dtype)

    def codes(self) -> torch.Tensor:
        """``codes - qmin``, shaped like the weight (uint8 up to 8 bits, else uint16)."""
        if not self.nibbles:
            return self.packed
        return _unpack_nibbles(self.packed, self.shape)

    def quantized(self) -> QuantizedTensor:
        """The codes as a ``QuantizedTensor`` whose zero points are shifted like them."""
        p = self.params
        return QuantizedTensor(
            self.codes(),
            p.scale,
            p.zero_point - p.qmin,
            p.bits,
            p.axis,
            0,
            p.qmax - p.qmin,
            self.dtype,
            p.group_size,
        )

    def values(self) -> torch.Tensor:
        return dequantize(self.quantized())

    def packed_bytes(self) -> int:
        p = self.params
        tensors = (self.packed, p.scale, p.zero_point)
        return sum(t.numel() * t.element_size() for t in tensors)

    def key(self) -> tuple:
        return ("codes", id(self.packed))

    def moved(self, device: torch.device) -> PackedCodes:
        if device == self.device:
            return PackedCodes(self.packed, self.params, self.shape, self.dtype)
        params = _params_on(self.params, device)
        assert isinstance(params, QuantParams)
        return PackedCodes(self.packed.to(device), params, self.shape, self.dtype)


class RoundedValues(LazyWeight):
    """The user's weight (or a masked one) and the mapping that rounds it: the values are
    recomputed on each use, exactly as the deep copy's were computed once.

    Round-to-nearest (and the MSE method's chosen scales) makes the codes a function of
    the weight the clone already shares, so they need not be held: the clone keeps only
    the scales, and a use costs a quantize-and-dequantize pass over the layer instead of
    a dequantize pass. That is what lets an int8 check of a bf16 model add next to
    nothing to the model's own bytes (held codes would add half of them).
    """

    shown_as = "rounded on use"
    source: torch.Tensor
    params: QuantParams | FloatParams

    @staticmethod
    def __new__(cls, source: torch.Tensor, params: QuantParams | FloatParams) -> RoundedValues:
        made = cast(
            RoundedValues, LazyWeight.__new__(cls, source.shape, source.dtype, source.device)
        )
        made.source, made.params = source, params
        return made

    def values(self) -> torch.Tensor:
        x, p = values_of(self.source), self.params
        if isinstance(p, FloatParams):
            return cast_to_format(x, p, "weight")
        return fake_quantize_with(
            x,
            p.scale,
            p.zero_point,
            qmin=p.qmin,
            qmax=p.qmax,
            axis=p.axis,
            group_size=p.group_size,
        )

    def codes(self) -> torch.Tensor:
        """``codes - qmin`` in the narrowest dtype (integer formats), computed now."""
        assert isinstance(self.params, QuantParams)
        return self.params.stored_codes(values_of(self.source), "weight", check=False)

    def elements(self) -> torch.Tensor:
        """The float format's elements (float formats), computed now."""
        assert isinstance(self.params, FloatParams)
        return cast_elements(values_of(self.source), self.params, "weight")

    def packed_bytes(self) -> int:
        p = self.params
        tensors = [p.scale] if isinstance(p, FloatParams) else [p.scale, p.zero_point]
        own = sum(t.numel() * t.element_size() for t in tensors if t is not None)
        return own + (self.source.packed_bytes() if isinstance(self.source, LazyWeight) else 0)

    def key(self) -> tuple:
        source = self.source
        origin = source.key() if isinstance(source, LazyWeight) else (source.data_ptr(),)
        return ("rounded", *origin, id(self.params))

    def moved(self, device: torch.device) -> RoundedValues:
        if device == self.device:
            return RoundedValues(self.source, self.params)
        return RoundedValues(self.source.to(device), _params_on(self.params, device))


def _params_on(
    params: QuantParams | FloatParams, device: torch.device
) -> QuantParams | FloatParams:
    """The mapping with its scales (and zero points) on ``device``."""
    if isinstance(params, FloatParams):
        scale = None if params.scale is None else params.scale.to(device)
        return dataclasses.replace(params, scale=scale)
    return dataclasses.replace(
        params, scale=params.scale.to(device), zero_point=params.zero_point.to(device)
    )


class MaskedValues(LazyWeight):
    """The user's weight (shared, never written) and a bit mask of the elements kept."""

    shown_as = "pruned"
    source: torch.Tensor
    kept: torch.Tensor

    @staticmethod
    def __new__(cls, source: torch.Tensor, kept: torch.Tensor) -> MaskedValues:
        made = cast(
            MaskedValues, LazyWeight.__new__(cls, source.shape, source.dtype, source.device)
        )
        made.source, made.kept = source, kept
        return made

    @classmethod
    def of(cls, source: torch.Tensor, keep: torch.Tensor) -> MaskedValues:
        """``source`` with the elements ``keep`` (a bool tensor of its shape) is False of
        set to zero; ``source`` may itself be masked (both masks then hold)."""
        if isinstance(source, MaskedValues):
            return cls(source.source, _pack_bits(keep & source.keep_mask()))
        return cls(source.detach(), _pack_bits(keep))

    def keep_mask(self) -> torch.Tensor:
        return _unpack_bits(self.kept, self.shape)

    def values(self) -> torch.Tensor:
        return self.source.masked_fill(~self.keep_mask(), 0)

    def packed_bytes(self) -> int:
        return self.kept.numel()

    def key(self) -> tuple:
        return ("masked", id(self.kept))

    def moved(self, device: torch.device) -> MaskedValues:
        if device == self.device:
            return MaskedValues(self.source, self.kept)
        return MaskedValues(self.source.to(device), self.kept.to(device))


def _pack_nibbles(codes: torch.Tensor) -> torch.Tensor:
    """Codes below 16, two per byte (the first in the low half), flattened."""
    flat = codes.reshape(-1).to(torch.uint8)
    if flat.numel() % 2:
        flat = torch.cat([flat, flat.new_zeros(1)])
    pairs = flat.view(-1, 2)
    return pairs[:, 0] | (pairs[:, 1] << 4)


def _unpack_nibbles(packed: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    codes = torch.stack([packed & 15, packed >> 4], dim=1).reshape(-1)
    return codes[: math.prod(shape)].reshape(shape)


_BIT_WEIGHTS = 1 << torch.arange(8, dtype=torch.uint8)


def _pack_bits(mask: torch.Tensor) -> torch.Tensor:
    """A bool tensor, eight elements per byte, flattened."""
    flat = mask.reshape(-1).to(torch.uint8)
    padding = (-flat.numel()) % 8
    if padding:
        flat = torch.cat([flat, flat.new_zeros(padding)])
    weights = _BIT_WEIGHTS.to(flat.device)
    return (flat.view(-1, 8) * weights).sum(dim=1, dtype=torch.uint8)


def _unpack_bits(packed: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    weights = _BIT_WEIGHTS.to(packed.device)
    bits = (packed.unsqueeze(1) & weights).ne(0).reshape(-1)
    return bits[: math.prod(shape)].reshape(shape)


# --- the clone ------------------------------------------------------------------------


_TABLES = ("_parameters", "_buffers", "_modules", "_non_persistent_buffers_set")


def shallow_clone(model: nn.Module) -> nn.Module:
    """A copy of ``model``'s module tree sharing its parameters (buffers cloned).

    Each module of the clone owns its tables (parameters, buffers, submodules, hooks), so
    replacing a weight, adding a hook or switching to eval mode on the clone leaves the
    user's model as it was. A submodule also held by a plain attribute (or a list or tuple
    of them) is the clone's there too; a module outside the tree stays shared, as it is
    never compressed (the recipe walks the registered submodules).
    """
    clones: dict[int, nn.Module] = {}

    def clone(module: nn.Module) -> nn.Module:
        if id(module) in clones:
            return clones[id(module)]
        made = copy.copy(module)
        state = vars(made)
        for name, value in list(state.items()):
            if name in _TABLES or (name.startswith("_") and "hooks" in name):
                state[name] = copy.copy(value)
        clones[id(module)] = made
        for name, buffer in made._buffers.items():
            if buffer is not None:
                made._buffers[name] = buffer.clone()
        for name, child in module._modules.items():
            made._modules[name] = None if child is None else clone(child)
        return made

    cloned = clone(model)
    for made in clones.values():
        _point_attributes_at_clones(made, clones)
    return cloned


def _point_attributes_at_clones(module: nn.Module, clones: dict[int, nn.Module]) -> None:
    def mapped(value: Any) -> Any:
        return clones.get(id(value), value) if isinstance(value, nn.Module) else value

    state = vars(module)
    for name, value in list(state.items()):
        if name in _TABLES or name.startswith("__"):
            continue
        if isinstance(value, nn.Module):
            state[name] = mapped(value)
        elif type(value) in (list, tuple) and any(isinstance(v, nn.Module) for v in value):
            state[name] = type(value)(mapped(v) for v in value)


def replace_parameter(model: nn.Module, old: torch.Tensor, new: torch.Tensor) -> None:
    """Every slot of ``model``'s parameter tables holding ``old`` (tied weights are one
    tensor in several modules) now holds ``new``, as a parameter."""
    parameter = new if isinstance(new, nn.Parameter) else nn.Parameter(new, requires_grad=False)
    for module in model.modules():
        for name, value in module._parameters.items():
            if value is old:
                module._parameters[name] = parameter


def move_clone(clone: nn.Module, device: torch.device | str) -> nn.Module:
    """``clone`` with every parameter and buffer on ``device``: new tensors in the clone's
    own tables. ``Module.to`` may instead set ``param.data`` in place, which on a tensor
    the clone shares would move the user's model."""
    target = torch.device(device)
    moved: dict[int, torch.Tensor] = {}  # tied tensors stay one tensor
    for module in clone.modules():
        for table in (module._parameters, module._buffers):
            for name, tensor in table.items():
                if tensor is None or tensor.device == target:
                    continue
                if id(tensor) not in moved:
                    new = tensor.detach().to(target)
                    if isinstance(tensor, nn.Parameter):
                        new = nn.Parameter(new, requires_grad=tensor.requires_grad)
                    moved[id(tensor)] = new
                table[name] = moved[id(tensor)]  # type: ignore[assignment]
    return clone


def lazy_weights(model: nn.Module) -> dict[str, LazyWeight]:
    """The model's packed weights by parameter name (tied ones under each name)."""
    return {
        name: param
        for name, param in model.named_parameters(remove_duplicate=False)
        if isinstance(param, LazyWeight)
    }


def held_bytes(model: nn.Module) -> int:
    """Bytes the clone holds of its own: its packed weights (each once) and buffers."""
    seen: dict[tuple, int] = {}
    for weight in lazy_weights(model).values():
        seen[weight.key()] = weight.packed_bytes()
    buffers = sum(b.numel() * b.element_size() for b in model.buffers())
    return sum(seen.values()) + buffers
