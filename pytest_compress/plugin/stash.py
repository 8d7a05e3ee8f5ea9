"""Where the plugin keeps its state on pytest's objects (``config.stash``, ``item.stash``)."""

from __future__ import annotations

import pytest

from ..checks.result import CompressionResult
from .markers import CheckRequest
from .session import CompressSession

SESSION_KEY = pytest.StashKey[CompressSession]()
REQUEST_KEY = pytest.StashKey[CheckRequest]()
RESULT_KEY = pytest.StashKey[CompressionResult]()
CALLS_KEY = pytest.StashKey[dict[str, int]]()
INVALID_KEY = pytest.StashKey[str]()
