"""A check's recipe deployed on a real runtime, measured as the simulation is.

``deploy`` hands the recipe to the runtime's own tools (``runtimes/``); ``PredictModule``
lets the engine's ``evaluate`` and every metric (built-in, batch or whole-model) run the
deployed artifact exactly as they run a torch model; ``time_deployed`` times it against
the float model in eager PyTorch, interleaved, on the same batches, threads and process.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Iterable, Iterator
from itertools import islice
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..engine.apply import copy_model
from ..engine.batches import call_model, split_batch
from ..engine.state import eval_mode
from ..errors import CompressError
from ..files import write_atomically
from ..runtimes.deployed import Compressed, Deployed, files_size, size_words
from ..runtimes.latency import LatencyMeasurement, measure_latency_ratio
from .request import Recipe

# Latency is timed on the first batches only: enough for a per-batch median, bounded
# however large the data set.
LATENCY_BATCHES = 8


class PredictModule(nn.Module):
    """A deployed artifact as a module: ``model(x)``, ``model(*x)`` and ``model(**x)``
    reach ``predict`` with the batch's inputs as they came (a tensor, a tuple, a dict)."""

    def __init__(self, deployed: Deployed) -> None:
        super().__init__()
        self.deployed = deployed

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        if kwargs:
            return self.deployed.predict(dict(kwargs))
        return self.deployed.predict(args[0] if len(args) == 1 else tuple(args))


def deploy(
    runtime: str,
    model: nn.Module,
    recipe: Recipe,
    batches: Iterable[Any],
    calibration: Iterable[Any] | None,
    workdir: Path,
    threads: int,
    *,
    exported: Path | None = None,
) -> Deployed:
    """``model`` compressed by ``recipe`` with ``runtime``'s own tools, saved in ``workdir``.

    ``exported``: for ONNX Runtime, the float model already exported (``export_float``).
    """
    quant = recipe.quantize
    if quant is None:  # refused at collection; the engine's callers get words too
        raise CompressError(f"runtime={runtime!r} deploys a quantized model: give quantize=...")
    if runtime == "onnxruntime":
        from ..runtimes.onnx_backend import deploy_onnx

        example = example_inputs(batches)
        return deploy_onnx(
            model, quant, recipe.prune, example, calibration, workdir, threads, exported=exported
        )
    if runtime == "torchao":
        from ..runtimes.torchao_backend import deploy_torchao

        return deploy_torchao(model, quant, recipe.prune, workdir)
    raise CompressError(f"unknown runtime {runtime!r}")


def export_float(model: nn.Module, example: Any, path: Path, prune: Any) -> None:
    """``model`` (pruned by ``prune`` on a copy) exported to ONNX at ``path``."""
    from ..runtimes.onnx_backend import export_onnx

    export_onnx(model, example, path, prune=prune)


def example_inputs(batches: Iterable[Any]) -> Any:
    """The first batch's inputs: what an exporter traces the model with."""
    for batch in batches:
        return split_batch(batch, need_targets=False)[0]
    raise CompressError("the data yielded no batch to export the model with")


def time_deployed(
    model: nn.Module,
    deployed: Deployed,
    batches: Iterable[Any],
    *,
    max_seconds: float,
    threads: int,
) -> LatencyMeasurement:
    """The deployed artifact's time per batch against the float model's in eager PyTorch."""
    inputs = [split_batch(b, need_targets=False)[0] for b in islice(batches, LATENCY_BATCHES)]

    def float_call(batch: Any) -> Any:
        return call_model(model, batch)

    with torch_threads(threads), eval_mode(model), torch.inference_mode():
        return measure_latency_ratio(float_call, deployed.predict, inputs, max_seconds=max_seconds)


@contextlib.contextmanager
def torch_threads(threads: int) -> Iterator[None]:
    """torch's intra-op threads set for the block, and restored after it."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def from_compressor(
    compressor: Any,
    label: str,
    model: nn.Module,
    calibration: Iterable[Any] | None,
    workdir: Path,
) -> tuple[Deployed, nn.Module | None]:
    """What the user's ``compressor(model, calibration_data)`` made of a *copy* of
    ``model`` (it is never trusted with the original), as a ``Deployed``; and the module
    itself when it returned one (its weights can be measured: sparsity)."""
    made = compressor(copy_model(model), calibration)
    if isinstance(made, nn.Module):
        path = workdir / "compressed.pt"
        buffer = io.BytesIO()
        torch.save(made.state_dict(), buffer)
        write_atomically(path, [buffer.getvalue()])
        files = (path,)
        words = f"torch.save of the state_dict {label} returned"
        module = made.eval()
        return (
            Deployed(
                runtime=label,
                predict=lambda inputs: call_model(module, inputs),
                files=files,
                size_bytes=files_size(files),
                saved_as=size_words(files, words),
            ),
            module,
        )
    if isinstance(made, Compressed):
        return _compressed(made, label), None
    raise CompressError(
        f"the compressor {label} returned a {type(made).__name__}; return the compressed "
        "torch.nn.Module, or pytest_compress.Compressed(predict=..., path=...) for an "
        "artifact that is not one"
    )


def _compressed(made: Compressed, label: str) -> Deployed:
    if not callable(made.predict):
        raise CompressError(f"the compressor {label} returned Compressed with a predict that "
                            f"is not callable: {made.predict!r}")  # fmt: skip
    missing = [str(path) for path in made.files if not path.is_file()]
    if missing:
        raise CompressError(
            f"the compressor {label} returned Compressed(path=...) naming files that do not "
            f"exist: {missing}; its size is the bytes of the files that load back"
        )
    names = ", ".join(path.name for path in made.files)
    return Deployed(
        runtime=label,
        predict=made.predict,
        files=made.files,
        size_bytes=files_size(made.files),
        saved_as=size_words(made.files, f"{names} from {label}"),
    )
