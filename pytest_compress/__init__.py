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
    "compress_model": "engine.apply",
    "prune_model": "engine.apply",
    "quantize_model": "engine.apply",
    "ModelMetric": "engine.measure",
    "SparsityReport": "engine.measure",
    "compressed_size": "fileformat.container",
    "evaluate": "engine.measure",
    "model_metric": "engine.measure",
    "model_size": "engine.measure",
    "sparsity": "engine.measure",
    "load_compressed": "fileformat.container",
    "save_compressed": "fileformat.container",
    "QuantizedTensor": "engine.quant",
    "dequantize": "engine.quant",
    "fake_quantize": "engine.quant",
    "quantize": "engine.quant",
    "PruneSpec": "engine.specs",
    "QuantSpec": "engine.specs",
    "BudgetExceeded": "budgets",
    "finetune": "tuning.recovery",
    "layer_sensitivity": "tuning.sensitivity",
    "recover_compressed": "tuning.recovery",
    "CompressionResult": "checks.result",
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
    from .budgets import BudgetExceeded
    from .checks.result import CompressionResult
    from .engine.apply import compress_model, prune_model, quantize_model
    from .engine.measure import (
        ModelMetric,
        SparsityReport,
        evaluate,
        model_metric,
        model_size,
        sparsity,
    )
    from .engine.quant import QuantizedTensor, dequantize, fake_quantize, quantize
    from .engine.specs import PruneSpec, QuantSpec
    from .fileformat.container import compressed_size, load_compressed, save_compressed
    from .tuning.recovery import finetune, recover_compressed
    from .tuning.sensitivity import layer_sensitivity


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'pytest_compress' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
