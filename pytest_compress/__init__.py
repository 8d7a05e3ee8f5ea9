"""pytest-compress: put model compression under test.

The engine (everything importable from here) never imports pytest; the pytest glue
lives in ``pytest_compress.plugin``.
"""

from .apply import compress_model, prune_model, quantize_model
from .measure import (
    ModelMetric,
    SparsityReport,
    compressed_size,
    evaluate,
    model_metric,
    model_size,
    sparsity,
)
from .quant import QuantizedTensor, dequantize, fake_quantize, quantize
from .specs import PruneSpec, QuantSpec

__version__ = "0.1.0"

__all__ = [
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
    "model_metric",
    "model_size",
    "prune_model",
    "quantize",
    "quantize_model",
    "sparsity",
]
