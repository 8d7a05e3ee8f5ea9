"""Setup shared by the plugin's pytester tests."""

from __future__ import annotations

import importlib

import pytest

# The transformers classes the inner projects of these tests build.
TRANSFORMERS_CLASSES = (
    "BertConfig",
    "BertModel",
    "BertForSequenceClassification",
    "GPT2Config",
    "GPT2LMHeadModel",
)


@pytest.fixture(scope="session")
def transformers_imported() -> None:
    """Import transformers (and the model modules it loads lazily) here, outside the inner
    runs: pytester drops the modules an inner run imported, and transformers' lazy modules
    cannot be imported a second time in one process. A fixture, not a module import, so
    only a worker that runs such a test pays for it."""
    transformers = importlib.import_module("transformers")
    for name in TRANSFORMERS_CLASSES:
        getattr(transformers, name)
