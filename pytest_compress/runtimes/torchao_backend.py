"""torchao: quantize a copy of the model with ``torchao.quantization.quantize_``, on the CPU.

"int8" is ``Int8WeightOnlyConfig``, "w8a8" ``Int8DynamicActivationInt8WeightConfig``
(activations quantized per token at run time: nothing to calibrate), "int4"
``IntxWeightOnlyConfig(weight_dtype=torch.int4)``: in torchao 0.18 the only int4 weight
layout that runs on a CPU in float32, and it stores each 4-bit value in a byte, so its file
is about as large as int8's (the size says so honestly). torchao quantizes ``nn.Linear``
layers; other compressible layers stay float and are named in ``Deployed.kept_float``.

The size is the bytes of ``torch.save(state_dict)`` of the quantized copy, a file that
``load_torchao`` reads back. torchao (the ``torchao`` extra) is imported lazily.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..engine.apply import copy_model, prune_model
from ..engine.batches import call_model
from ..engine.layers import compressible_layers, matches
from ..engine.specs import PruneSpec, QuantSpec
from ..errors import CompressError, ModelError, SpecError
from ..files import write_atomically
from .deployed import Deployed, files_size, size_words
from .registry import missing_extra, unsupported

RUNTIME = "torchao"
FILE_NAME = "torchao_state_dict.pt"


def deploy_torchao(
    model: nn.Module, quant: QuantSpec, prune: PruneSpec | None, workdir: str | os.PathLike
) -> Deployed:
    """A copy of ``model`` pruned (in torch), quantized by torchao, saved in ``workdir``."""
    reason = unsupported(RUNTIME, quant, prune)
    if reason is not None:
        raise SpecError(reason)
    quantized, float_layers = _quantize(model, quant, prune)
    path = Path(workdir) / FILE_NAME
    buffer = io.BytesIO()
    torch.save(quantized.state_dict(), buffer)
    write_atomically(path, [buffer.getvalue()])
    files = (path,)
    return Deployed(
        runtime=RUNTIME,
        predict=_Predictor(quantized),
        files=files,
        size_bytes=files_size(files),
        saved_as=size_words(files, f"torch.save of the torchao {quant.describe()} state_dict")
        + _left_float(float_layers),
        kept_float=float_layers,
    )


def _left_float(layers: tuple[str, ...]) -> str:
    """What the report says of the layers torchao did not quantize (it cached with it)."""
    if not layers:
        return ""
    return f"; left float (torchao quantizes Linear layers only): {', '.join(layers)}"


def quantize_torchao(model: nn.Module, quant: QuantSpec, prune: PruneSpec | None) -> nn.Module:
    """The quantized copy (``model`` itself is never modified), in eval mode."""
    return _quantize(model, quant, prune)[0]


def _quantize(
    model: nn.Module, quant: QuantSpec, prune: PruneSpec | None
) -> tuple[nn.Module, tuple[str, ...]]:
    """The quantized copy, and the selected compressible layers torchao left in float."""
    if missing_extra(RUNTIME) is not None:
        raise CompressError(missing_extra(RUNTIME))
    with _quiet_torchao_import():
        from torchao.quantization import quantize_

    copied = prune_model(model, prune, low_memory=False) if prune is not None else copy_model(model)
    copied.eval()
    # Named before quantize_: a torchao weight is a tensor subclass, no longer the
    # nn.Parameter that compressible_layers looks for.
    selected = [layer.name for layer in compressible_layers(copied, quant.include, quant.exclude)]
    try:
        quantize_(copied, torchao_config(quant), filter_fn=_selected(quant))
    except Exception as error:  # torchao asserts on shapes and dtypes it cannot handle
        raise ModelError(
            f"torchao cannot quantize {type(model).__name__} as {quant.describe()}: "
            f"{type(error).__name__}: {error}"
        ) from error
    return copied, tuple(name for name in selected if _is_float(copied, name))


def torchao_config(quant: QuantSpec) -> Any:
    """torchao's config for a recipe ``unsupported`` accepted."""
    with _quiet_torchao_import():
        from torchao.quantization import (
            Int8DynamicActivationInt8WeightConfig,
            Int8WeightOnlyConfig,
            IntxWeightOnlyConfig,
        )
        from torchao.quantization.granularity import PerAxis, PerRow, PerTensor

    if quant.bits == 4:
        axis = PerAxis(0) if quant.per_channel else PerTensor()
        # torch.int4 exists at run time but not in torch's type stubs.
        int4 = getattr(torch, "int4")  # noqa: B009
        return IntxWeightOnlyConfig(weight_dtype=int4, granularity=axis)
    row = PerRow() if quant.per_channel else PerTensor()
    if quant.quantizes_activations:
        return Int8DynamicActivationInt8WeightConfig(granularity=row)
    return Int8WeightOnlyConfig(granularity=row)


def load_torchao(model: nn.Module, quant: QuantSpec, path: str | os.PathLike) -> nn.Module:
    """The quantized model back from its file: quantize a fresh copy, then load the saved state.

    ``weights_only=True``: torchao registers its tensor subclasses as safe globals.
    """
    quantized = quantize_torchao(model, quant, None)
    state = torch.load(path, weights_only=True)
    quantized.load_state_dict(state, assign=True)
    return quantized


def _is_float(model: nn.Module, name: str) -> bool:
    return type(model.get_submodule(name).weight) in (torch.Tensor, nn.Parameter)


def _selected(quant: QuantSpec) -> Any:
    def selected(module: nn.Module, name: str) -> bool:
        return isinstance(module, nn.Linear) and matches(name, quant.include, quant.exclude)

    return selected


class _Predictor:
    def __init__(self, model: nn.Module) -> None:
        self.model = model

    def __call__(self, inputs: Any) -> Any:
        with torch.inference_mode():
            return call_model(self.model, inputs)


@contextlib.contextmanager
def _quiet_torchao_import() -> Iterator[None]:
    """Silence one log line torchao 0.18's import makes torch write.

    torchao registers an Enum with ``torch.utils._pytree.register_constant``, and torch
    >= 2.14 logs (through ``logging``, not ``warnings``) that this is deprecated. Nothing a
    user can act on, printed on every run; only that logger, only during the import.
    """
    logger = logging.getLogger("torch.utils._pytree")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)
