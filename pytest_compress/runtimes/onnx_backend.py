"""ONNX Runtime: export the float model once, quantize the ONNX file, run it on the CPU.

``export_onnx`` writes the float (or pruned-in-torch) model as an ONNX file with a dynamic
batch dimension, prepared for quantization; a caller may cache that file and pass it to
``deploy_onnx`` as ``exported``. ``deploy_onnx`` quantizes it ("int8": dynamic
quantization, int8 weights per channel and activations quantized at run time; "w8a8":
static QDQ quantization calibrated on data) and returns a ``Deployed`` whose size is the
bytes of the quantized file(s). Every file appears whole or not at all.

onnx, onnxruntime and onnxscript (the ``onnx`` extra) are imported inside the functions
that need them: importing this module needs torch and NumPy only.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..engine.apply import prune_model
from ..engine.batches import describe_inputs, model_device, split_batch, to_device
from ..engine.specs import PruneSpec, QuantSpec
from ..engine.state import eval_mode
from ..errors import CompressError, DataError, ModelError, SpecError
from .deployed import Deployed, files_size, size_words
from .registry import missing_extra, unsupported

RUNTIME = "onnxruntime"
# Above this many bytes of parameters the weights go to an external data file: one
# protobuf message cannot exceed 2 GB, and the exporter and quantizer copy it on the way.
EXTERNAL_DATA_BYTES = 1 << 30
# ONNX input element types as onnxruntime names them, and the NumPy dtype it requires.
_NUMPY_TYPES = {
    "tensor(float)": np.float32,
    "tensor(double)": np.float64,
    "tensor(float16)": np.float16,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
    "tensor(bool)": np.bool_,
}
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def export_onnx(
    model: nn.Module,
    example_inputs: Any,
    path: str | os.PathLike,
    *,
    prune: PruneSpec | None = None,
    external_data: bool | None = None,
) -> tuple[Path, ...]:
    """Export ``model`` (pruned on a copy by ``prune``) to ``path``; returns the files written.

    The batch dimension (axis 0 of every input) is dynamic. The file is pre-processed for
    quantization (shape inference, graph optimization), as onnxruntime recommends.
    ``external_data`` (default: only for models over 1 GiB of parameters) puts the
    weights in ``<path>.data``. ``ModelError`` when torch cannot export the model.
    """
    _require_extra()
    target = Path(path)
    source = prune_model(model, prune, low_memory=False) if prune is not None else model
    program = _torch_export(source, example_inputs)
    external = external_data
    if external is None:
        external = _parameter_bytes(source) > EXTERNAL_DATA_BYTES
    with _staging(target) as staging:
        raw = staging / "raw.onnx"
        program.save(str(raw), external_data=external)
        staged = staging / target.name
        _pre_process(raw, staged, external)
        return _publish(staged, target)


def deploy_onnx(
    model: nn.Module,
    quant: QuantSpec,
    prune: PruneSpec | None,
    example_inputs: Any,
    calibration_batches: Iterable[Any] | None,
    workdir: str | os.PathLike,
    threads: int = 1,
    *,
    exported: str | os.PathLike | None = None,
) -> Deployed:
    """``model`` pruned (in torch) and quantized by ONNX Runtime, saved in ``workdir``.

    ``exported``: the float file ``export_onnx`` wrote for this model and ``prune`` (the
    caller's cache); exported here when None. ``calibration_batches`` (inputs, or
    (inputs, targets) pairs) calibrate "w8a8". ``threads``: onnxruntime's intra-op threads.
    """
    reason = unsupported(RUNTIME, quant, prune)
    if reason is not None:
        raise SpecError(reason)
    _require_extra()
    directory = Path(workdir)
    if exported is None:
        exported = directory / "float.onnx"
        export_onnx(model, example_inputs, exported, prune=prune)
    source = Path(exported)
    static = quant.needs_calibration  # "w8a8-dynamic" is ONNX Runtime's dynamic int8
    target = directory / ("w8a8.onnx" if static else "int8.onnx")
    with _staging(target) as staging:
        staged = staging / target.name
        if static:
            _quantize_static(source, staged, quant, _required_batches(calibration_batches))
        else:
            _quantize_dynamic(source, staged, quant)
        files = _publish(staged, target)
    how = "static QDQ, calibrated" if static else "dynamic"
    return Deployed(
        runtime=RUNTIME,
        predict=OnnxPredictor(open_session(target, threads)),
        files=files,
        size_bytes=files_size(files),
        saved_as=size_words(files, f"ONNX file ({quant.describe()}, {how})"),
    )


def open_session(path: str | os.PathLike, threads: int = 1) -> Any:
    """An onnxruntime ``InferenceSession`` on the CPU with ``threads`` intra-op threads."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


class OnnxPredictor:
    """``predict(inputs)`` for a session: inputs fed by the graph's input names, outputs as tensors.

    A tensor feeds the first input, a tuple or list the inputs in order, a dict the inputs
    of the same names. One output comes back as a tensor, several as a tuple.
    """

    def __init__(self, session: Any) -> None:
        self.session = session
        self.inputs = [(node.name, node.type) for node in session.get_inputs()]

    def __call__(self, inputs: Any) -> Any:
        outputs = self.session.run(None, feeds(self.inputs, inputs))
        tensors = tuple(torch.from_numpy(np.asarray(output)) for output in outputs)
        return tensors[0] if len(tensors) == 1 else tensors


def feeds(graph_inputs: list[tuple[str, str]], inputs: Any) -> dict[str, np.ndarray]:
    """The session's feed dict for a batch's inputs; ``DataError`` when they do not fit."""
    names = [name for name, _ in graph_inputs]
    if isinstance(inputs, Mapping):
        missing = [name for name in names if name not in inputs]
        if missing:
            raise DataError(
                f"the ONNX graph takes inputs {names}, the batch's dict lacks {missing}"
            )
        values = [inputs[name] for name in names]
    elif isinstance(inputs, (tuple, list)):
        if len(inputs) != len(names):
            raise DataError(
                f"the ONNX graph takes {len(names)} inputs {names}, the batch gives "
                f"{len(inputs)}: {describe_inputs(inputs)}"
            )
        values = list(inputs)
    elif len(names) == 1:
        values = [inputs]
    else:
        raise DataError(
            f"the ONNX graph takes {len(names)} inputs {names}, the batch gives one: "
            f"{describe_inputs(inputs)}; give a tuple or a dict of inputs"
        )
    return {
        name: _array(value, kind) for (name, kind), value in zip(graph_inputs, values, strict=True)
    }


def _array(value: Any, kind: str) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    array = np.asarray(value)
    # onnxruntime requires the exact element type the graph declares (NumPy data is float64).
    dtype = _NUMPY_TYPES.get(kind)
    return array.astype(dtype, copy=False) if dtype is not None else array


def _torch_export(model: nn.Module, example_inputs: Any) -> Any:
    """The ``torch.onnx.ONNXProgram`` of ``model`` with a dynamic batch dimension.

    The torch.export-based exporter (``dynamo=True``): the TorchScript one emits a
    DeprecationWarning in torch >= 2.9. ``Dim.AUTO`` rather than one named Dim for every
    input: a name shared between inputs makes the exporter warn that it dropped the name.
    """
    inputs = to_device(example_inputs, model_device(model))
    args: tuple[Any, ...]
    kwargs: dict[str, Any] = {}
    if isinstance(inputs, Mapping):
        args, kwargs = (), dict(inputs)
        shapes: Any = {name: _batch_dim(value) for name, value in kwargs.items()}
    else:
        args = tuple(inputs) if isinstance(inputs, (tuple, list)) else (inputs,)
        shapes = tuple(_batch_dim(value) for value in args)
    try:
        with eval_mode(model):
            return torch.onnx.export(
                model, args, None, kwargs=kwargs, dynamo=True, dynamic_shapes=shapes, verbose=False
            )
    except Exception as error:  # the exporter raises many types, each with a long report
        raise ModelError(
            f"cannot export {type(model).__name__} to ONNX for runtime='onnxruntime': "
            f"{_reason(error)}. Use the default runtime (simulate), or make the model "
            "exportable with torch.export (no data-dependent control flow)"
        ) from None  # the exporter's own traceback is pages long and names its internals


def _batch_dim(value: Any) -> Any:
    if isinstance(value, torch.Tensor) and value.dim() >= 1:
        return {0: torch.export.Dim.AUTO}
    return None


def _reason(error: Exception) -> str:
    """The one line of an exporter error that says what failed (it leads with advice)."""
    text = _ANSI.sub("", str(error))
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if "## Exception summary" in lines:
        lines = lines[lines.index("## Exception summary") + 1 :]
    first = lines[0] if lines else type(error).__name__
    return first if len(first) <= 400 else first[:397] + "..."


def _parameter_bytes(model: nn.Module) -> int:
    tensors = [*model.parameters(), *model.buffers()]
    return sum(tensor.numel() * tensor.element_size() for tensor in tensors)


def _pre_process(raw: Path, out: Path, external: bool) -> None:
    """Shape inference and graph optimization before quantizing (onnxruntime's advice)."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    try:
        quant_pre_process(
            str(raw),
            str(out),
            save_as_external_data=external,
            all_tensors_to_one_file=True,
            external_data_location=_data_file(out).name,
        )
    except Exception:
        # Symbolic shape inference does not know every operator; quantizing the plain
        # export still works (onnxruntime then logs its advice to pre-process).
        import onnx

        model = onnx.load(str(raw))
        onnx.save_model(
            model, str(out), save_as_external_data=external, location=_data_file(out).name
        )


def _quantize_dynamic(source: Path, out: Path, quant: QuantSpec) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(
        str(source),
        str(out),
        per_channel=quant.per_channel,
        weight_type=QuantType.QInt8,
        use_external_data_format=_data_file(source).exists(),
    )


def _quantize_static(source: Path, out: Path, quant: QuantSpec, batches: Iterable[Any]) -> None:
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    percentile = quant.observer == "percentile"
    quantize_static(
        str(source),
        str(out),
        _CalibrationReader(open_session(source), batches),
        quant_format=QuantFormat.QDQ,
        per_channel=quant.per_channel,
        # u8 activations (affine, like the simulated w8a8) and s8 weights: onnxruntime's
        # recommended pairing on x86 CPUs.
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        calibrate_method=CalibrationMethod.Percentile if percentile else CalibrationMethod.MinMax,
        use_external_data_format=_data_file(source).exists(),
        extra_options={"CalibPercentile": quant.percentile} if percentile else {},
    )


class _CalibrationReader:
    """onnxruntime's ``CalibrationDataReader`` protocol (``get_next``) over the batches.

    Duck-typed: the base class lives in onnxruntime, which this module does not import
    at its top.
    """

    def __init__(self, session: Any, batches: Iterable[Any]) -> None:
        self.inputs = [(node.name, node.type) for node in session.get_inputs()]
        self.batches = iter(batches)
        self.count = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self.batches, None)
        if batch is None:
            if self.count == 0:
                raise DataError("calibration_data yielded no batches; w8a8 needs data")
            return None
        self.count += 1
        inputs, _ = split_batch(batch, need_targets=False)
        return feeds(self.inputs, inputs)


def _required_batches(batches: Iterable[Any] | None) -> Iterable[Any]:
    if batches is None:
        raise DataError(
            "runtime='onnxruntime' calibrates w8a8 activation ranges on data: "
            "give calibration data (the compress_calibration_data fixture or calibration_data=)"
        )
    return batches


def _data_file(path: Path) -> Path:
    """Where the weights of ``path`` go when stored as external data (onnxruntime's name)."""
    return path.with_name(path.name + ".data")


@contextlib.contextmanager
def _staging(target: Path) -> Iterator[Path]:
    """A temporary folder beside ``target`` (same file system: renames are atomic)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _publish(staged: Path, target: Path) -> tuple[Path, ...]:
    """Rename the staged file (and its external data) to ``target``; the .onnx comes last,
    so a complete ``target`` never refers to missing data."""
    files = [target]
    if _data_file(staged).exists():
        os.replace(_data_file(staged), _data_file(target))
        files.append(_data_file(target))
    else:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(_data_file(target))  # an earlier, external-data version's weights
    os.replace(staged, target)
    return tuple(files)


def _require_extra() -> None:
    missing = missing_extra(RUNTIME)
    if missing is not None:
        raise CompressError(missing)
