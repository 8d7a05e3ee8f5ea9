"""pytest-compress: put model compression under test.

The engine (everything importable from here) never imports pytest; the pytest glue
lives in ``pytest_compress.plugin``.
"""

from .quant import QuantizedTensor, dequantize, fake_quantize, quantize
from .specs import PruneSpec, QuantSpec

__version__ = "0.1.0"

__all__ = [
    "PruneSpec",
    "QuantSpec",
    "QuantizedTensor",
    "__version__",
    "dequantize",
    "fake_quantize",
    "quantize",
]
