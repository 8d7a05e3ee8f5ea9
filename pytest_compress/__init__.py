"""pytest-compress: put model compression under test.

The library (everything importable from here) never imports pytest; the pytest plugin
is ``pytest_compress.plugin``. ``EXPORTS`` is the public API, one table: each name and
the module it lives in. Names are imported on first use, so that loading the plugin
(every pytest start, ``pytest --help`` included) does not import torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# The public API: name -> module (relative to this package). README.md documents each.
EXPORTS: dict[str, str] = {
    # recipes
    "QuantSpec": "engine.specs",
    "PruneSpec": "engine.specs",
    "TRANSFORMER_EXCLUDE": "engine.specs",
    "quantize_model": "engine.apply",
    "prune_model": "engine.apply",
    "compress_model": "engine.apply",
    # tensors
    "QuantizedTensor": "engine.quant",
    "quantize": "engine.quant",
    "dequantize": "engine.quant",
    "fake_quantize": "engine.quant",
    # measuring
    "evaluate": "engine.measure",
    "model_metric": "engine.measure",
    "ModelMetric": "engine.measure",
    "model_size": "engine.measure",
    "sparsity": "engine.measure",
    "SparsityReport": "engine.measure",
    "top1_accuracy": "engine.measure",
    # built-in metrics
    "builtin_metric": "engine.metrics",
    "BuiltinMetric": "engine.metrics",
    "topk_accuracy": "engine.metrics",
    "cosine_similarity": "engine.metrics",
    "mean_squared_error": "engine.metrics",
    "relative_error": "engine.metrics",
    "perplexity": "engine.metrics",
    # the file format
    "save_compressed": "fileformat.container",
    "load_compressed": "fileformat.container",
    "compressed_size": "fileformat.container",
    # tuning
    "layer_sensitivity": "tuning.sensitivity",
    "SensitivityResult": "tuning.sensitivity",
    "SearchResult": "tuning.search",
    "KeepFloatResult": "tuning.keep_float",
    "recover_compressed": "tuning.recovery",
    "finetune": "tuning.recovery",
    "RecoveryResult": "tuning.recovery",
    # checks and verdicts
    "CompressionResult": "checks.result",
    "Compressed": "runtimes.deployed",
    "Budgets": "budgets",
    "BudgetCheck": "budgets",
    "BudgetExceeded": "budgets",
    # errors
    "CompressError": "errors",
    "SpecError": "errors",
    "ModelError": "errors",
    "DataError": "errors",
    "CalibrationError": "errors",
    "FileFormatError": "errors",
    "BudgetError": "errors",
    "MetricError": "errors",
}

__all__ = ["__version__", *EXPORTS]

if TYPE_CHECKING:  # for type checkers and IDEs; a test holds this list to EXPORTS
    from .budgets import BudgetCheck, BudgetExceeded, Budgets
    from .checks.result import CompressionResult
    from .engine.apply import compress_model, prune_model, quantize_model
    from .engine.measure import (
        ModelMetric,
        SparsityReport,
        evaluate,
        model_metric,
        model_size,
        sparsity,
        top1_accuracy,
    )
    from .engine.metrics import (
        BuiltinMetric,
        builtin_metric,
        cosine_similarity,
        mean_squared_error,
        perplexity,
        relative_error,
        topk_accuracy,
    )
    from .engine.quant import QuantizedTensor, dequantize, fake_quantize, quantize
    from .engine.specs import TRANSFORMER_EXCLUDE, PruneSpec, QuantSpec
    from .errors import (
        BudgetError,
        CalibrationError,
        CompressError,
        DataError,
        FileFormatError,
        MetricError,
        ModelError,
        SpecError,
    )
    from .fileformat.container import compressed_size, load_compressed, save_compressed
    from .runtimes.deployed import Compressed
    from .tuning.keep_float import KeepFloatResult
    from .tuning.recovery import RecoveryResult, finetune, recover_compressed
    from .tuning.search import SearchResult
    from .tuning.sensitivity import SensitivityResult, layer_sensitivity


def __getattr__(name: str) -> Any:
    module = EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'pytest_compress' has no attribute {name!r}")
    # Not cached here: importing through sys.modules each time gives the module that is
    # loaded now, also after a pytester in-process run discarded the one loaded before.
    return getattr(importlib.import_module(f".{module}", __name__), name)


def __dir__() -> list[str]:
    return list(__all__)
