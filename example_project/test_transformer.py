"""Compression gates for a tiny transformer encoder: its embeddings must survive compression.

The metric is the built-in "cosine": the mean cosine similarity of the compressed copy's
embeddings to the float model's, on held-out digits given as bare token batches (no
labels). A drop of 0.01 means the embeddings moved by 0.01 in cosine similarity.
"""

import pytest

ENCODER = {"model": "digit_encoder", "data": "digit_tokens", "metric": "cosine"}


# Budgets are at most twice what they guard (measured: int8 drops 0.00002, int4 0.0035,
# w8a8 0.00006, 50 % pruning 0.10), with a floor of 0.001.
@pytest.mark.compress(quantize="int8", max_accuracy_drop=0.001, max_size_ratio=0.34, **ENCODER)
def test_encoder_int8():
    pass


@pytest.mark.compress(quantize="int4", max_accuracy_drop=0.007, max_size_ratio=0.25, **ENCODER)
def test_encoder_int4():
    pass


@pytest.mark.compress(
    quantize="w8a8",
    calibration_data="digit_tokens_validation",
    max_accuracy_drop=0.001,
    max_size_ratio=0.34,
    **ENCODER,
)
def test_encoder_w8a8():
    pass


@pytest.mark.compress(prune=0.5, max_accuracy_drop=0.2, min_sparsity=0.49, **ENCODER)
def test_encoder_prune_50():
    pass
