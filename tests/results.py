"""A check's result with the figures of the design's example, for the tests that read one."""

from __future__ import annotations

from pytest_compress.budgets import Budgets
from pytest_compress.checks.result import CompressionResult
from pytest_compress.engine.specs import PruneSpec


def make_result(**changes) -> CompressionResult:
    fields = dict(
        float_metric=0.978,
        compressed_metric=0.949,
        accuracy_drop=0.978 - 0.949,
        relative_drop=(0.978 - 0.949) / 0.978,
        float_size=246_100,
        compressed_size=17_200,
        size_ratio=17_200 / 246_100,
        sparsity=0.8,
        recipe="int4 per-channel + prune 80% (global, magnitude)",
        prune=PruneSpec(amount=0.8, scope="global"),
        budgets=Budgets(max_accuracy_drop=0.02, max_size_ratio=0.1),
        model="compress_model",
        data="compress_data",
    )
    fields.update(changes)
    return CompressionResult(**fields).judged()
