"""pytest-compress: put model compression under test.

The engine (everything importable from here) never imports pytest; the pytest glue
lives in ``pytest_compress.plugin``. Names are imported on first use, so that loading
the plugin (every pytest start, ``pytest --help`` included) does not import torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    "compress_model": "apply",
    "prune_model": "apply",
    "quantize_model": "apply",
    "ModelMetric": "measure",
    "SparsityReport": "measure",
    "compressed_size": "measure",
    "evaluate": "measure",
    "model_metric": "measure",
    "model_size": "measure",
    "sparsity": "measure",
    "load_compressed": "packing",
    "save_compressed": "packing",
    "QuantizedTensor": "quant",
    "dequantize": "quant",
    "fake_quantize": "quant",
    "quantize": "quant",
    "PruneSpec": "specs",
    "QuantSpec": "specs",
    "BudgetExceeded": "budgets",
    "finetune": "recovery",
    "layer_sensitivity": "sensitivity",
    "recover_compressed": "recovery",
    "CompressionResult": "result",
}

__all__ = [
    "BudgetExceeded",
    "CompressionResult",
    "ModelMetric",
    "PruneSpec",
    "QuantSpec",
    "QuantizedTensor",
    "SparsityReport",
    "__version__",
    "compress_model",
    "compressed_size",
    "dequantize",
    "evaluate",
    "fake_quantize",
    "finetune",
    "layer_sensitivity",
    "load_compressed",
    "model_metric",
    "model_size",
    "prune_model",
    "quantize",
    "quantize_model",
    "recover_compressed",
    "save_compressed",
    "sparsity",
]

if TYPE_CHECKING:
    from .apply import compress_model, prune_model, quantize_model
    from .budgets import BudgetExceeded
    from .measure import (
        ModelMetric,
        SparsityReport,
        compressed_size,
        evaluate,
        model_metric,
        model_size,
        sparsity,
    )
    from .packing import load_compressed, save_compressed
    from .quant import QuantizedTensor, dequantize, fake_quantize, quantize
    from .recovery import finetune, recover_compressed
    from .result import CompressionResult
    from .sensitivity import layer_sensitivity
    from .specs import PruneSpec, QuantSpec


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'pytest_compress' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
