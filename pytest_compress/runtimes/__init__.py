"""Real runtimes: each turns (model, recipe, calibration data) into a deployed artifact.

``registry.py`` (torch-free) says which runtimes exist, which recipes each runs and which
pip extra provides it; ``onnx_backend.py`` (ONNX Runtime) and ``torchao_backend.py``
(torchao) deploy a model and return a ``Deployed`` (``deployed.py``) with the honest size
of its files; ``latency.py`` measures how much slower or faster it runs than the float
model. The optional packages are imported only inside the functions that need them.
Uses torch and the engine, never pytest. See ARCHITECTURE.md for the layers.
"""

from .registry import EXTRAS, RUNTIMES, check_runtime, missing_extra, unsupported

__all__ = ["EXTRAS", "RUNTIMES", "check_runtime", "missing_extra", "unsupported"]
