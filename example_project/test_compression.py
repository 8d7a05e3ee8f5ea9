"""Compression gates for the digits models: quantization, pruning and search, each under budget.

Budgets are tight: each is at most twice the accuracy drop or size it guards (with a
floor of 0.5 percentage points for accuracy), so a real regression fails the build.
Accuracy is always measured on the held-out test split (see conftest.py).
"""

import pytest

from pytest_compress import PruneSpec, QuantSpec

# Whole-model "parameter quantization": every parameter (weights and biases),
# one affine min/max mapping per tensor, 8 bits.
PARAMETER_INT8 = QuantSpec(bits=8, parameters="all", per_channel=False)
# Activation pruning: zero |a| < beta * max|a| in every layer's output, except the class scores.
LENET_ACTIVATION_PRUNING = PruneSpec(activation_threshold=0.1, exclude=("fc3",))
MLP_ACTIVATION_PRUNING = PruneSpec(activation_threshold=0.1, exclude=("4",))
GLOBAL_50 = PruneSpec(amount=0.5, scope="global")

MLP = {"model": "digits_mlp", "data": "digits_vectors"}


# --- the LeNet (fixtures compress_model / compress_data) ---------------------------------


@pytest.mark.compress(quantize=PARAMETER_INT8, max_accuracy_drop=0.005, max_size_ratio=0.26)
def test_parameter_quantization_int8():
    """Weights and biases on the affine min/max grid, 4x smaller."""


@pytest.mark.compress(quantize="int8", max_accuracy_drop=0.005, max_size_ratio=0.27)
def test_weight_quantization_int8():
    """Weights per output channel at 8 bits."""


@pytest.mark.compress(quantize="int4", max_accuracy_drop=0.005, max_size_ratio=0.14)
def test_weight_quantization_int4_per_channel():
    """Weights per output channel at 4 bits: half a byte each."""


# One scale (float16) per group of 128 inputs of a channel, as GGUF Q4, AWQ and GPTQ
# checkpoints ship; the LeNet's smaller layers (conv1: 75 inputs) get one group per channel.
INT4_G128 = QuantSpec(bits=4, group_size=128, allow_short_rows=True)


@pytest.mark.compress(quantize=INT4_G128, max_accuracy_drop=0.005, max_size_ratio=0.14)
def test_weight_quantization_int4_g128():
    """Group-wise int4 with float16 scales: the format LLM checkpoints deploy."""


@pytest.mark.compress(quantize="bf16", max_accuracy_drop=0.005, max_size_ratio=0.51)
def test_weight_quantization_bf16():
    """bfloat16 weights, rounded to nearest even as torch's .to(torch.bfloat16): half the bytes."""


@pytest.mark.compress(quantize="w8a8", max_accuracy_drop=0.005, max_size_ratio=0.27)
def test_activation_quantization_w8a8():
    """8-bit weights and 8-bit layer outputs, ranges calibrated on the validation split."""


@pytest.mark.compress(
    prune=PruneSpec(threshold=0.2), max_accuracy_drop=0.005, min_sparsity=0.69, max_size_ratio=0.35
)
def test_weight_pruning_threshold(compression):
    """Magnitude threshold pruning: zero every weight with |w| < 0.2 * max|w| of its layer."""
    assert compression.sparsity < 0.8, "alpha 0.2 should not prune this much"


@pytest.mark.compress(
    prune=GLOBAL_50, max_accuracy_drop=0.005, min_sparsity=0.5, max_size_ratio=0.53
)
def test_weight_pruning_global_50_percent():
    """The smallest half of all weights, ranked across layers."""


@pytest.mark.compress(prune=LENET_ACTIVATION_PRUNING, max_accuracy_drop=0.005)
def test_activation_pruning():
    """Small activations zeroed at run time (|a| < 0.1 * max|a|)."""


@pytest.mark.compress(
    prune=PruneSpec(amount=0.8, scope="global"),
    quantize="int4",
    max_accuracy_drop=0.005,
    max_size_ratio=0.06,
    min_sparsity=0.8,
)
def test_deep_compression_prune_80_int4():
    """Deep Compression: prune 80 %, then 4-bit codes with a sparse encoding: 17x smaller."""


def test_bit_width_sweep(compress):
    """The callable fixture: one check per bit width, each in the reports."""
    for bits in (8, 6, 4):
        result = compress(quantize=f"int{bits}", max_accuracy_drop=0.005)
        assert result.size_ratio < 0.27


# --- adjusting the recipe from evaluation: search and recovery -----------------------------


@pytest.mark.compress(search="sparsity", max_accuracy_drop=0.005)
def test_search_sparsity(compression):
    """The most global magnitude pruning within 0.5 pp, to 0.01, by bisection (<= 7 checks)."""
    assert compression.search.passed and compression.search.evaluations <= 7


@pytest.mark.compress(search="threshold", max_accuracy_drop=0.005)
def test_search_threshold(compression):
    """The largest alpha (|w| < alpha * max|w| zeroed) within 0.5 pp, on a log grid."""
    assert compression.search.passed and compression.search.evaluations <= 8


@pytest.mark.compress(search="bits", max_accuracy_drop=0.005)
def test_search_bits(compression):
    """The fewest weight bits (8 down to 2) within 0.5 pp."""
    assert compression.search.passed and compression.search.evaluations <= 3


@pytest.mark.compress(
    prune=PruneSpec(amount=0.9, scope="global"),
    recover="short_finetune",
    max_accuracy_drop=0.005,
    min_sparsity=0.9,
    max_size_ratio=0.13,
)
def test_prune_90_recovered_by_finetuning(compression):
    """90 % global pruning costs 2.5 pp; one epoch of fine-tuning on the training split
    (pruned weights held at zero) brings it back within the budget."""
    recovery = compression.recovery
    assert recovery.metric_before < compression.float_metric - 0.01  # it needed recovery
    assert recovery.unzeroed == {}  # finetune() never moves a pruned weight


@pytest.mark.xfail(strict=True, reason="shows the failure message: 2 bits + 90 % is too much")
@pytest.mark.compress(
    quantize="int2", prune=PruneSpec(amount=0.9, scope="global"), max_accuracy_drop=0.005
)
def test_too_much_compression_fails():
    """A deliberately broken budget: the suite proves the gate really fails."""


# --- the MLP on flat digits (model= and data= pick its fixtures) -------------------------


@pytest.mark.compress(quantize=PARAMETER_INT8, max_accuracy_drop=0.005, max_size_ratio=0.25, **MLP)
def test_mlp_parameter_quantization_int8():
    pass


@pytest.mark.compress(quantize="int8", max_accuracy_drop=0.005, max_size_ratio=0.27, **MLP)
def test_mlp_weight_quantization_int8():
    pass


@pytest.mark.compress(quantize="int4", max_accuracy_drop=0.005, max_size_ratio=0.15, **MLP)
def test_mlp_weight_quantization_int4_per_channel():
    pass


@pytest.mark.compress(
    quantize="w8a8",
    max_accuracy_drop=0.005,
    max_size_ratio=0.27,
    calibration_data="digits_vectors_validation",
    **MLP,
)
def test_mlp_activation_quantization_w8a8():
    pass


@pytest.mark.compress(
    prune=PruneSpec(threshold=0.1),
    max_accuracy_drop=0.01,
    min_sparsity=0.33,
    max_size_ratio=0.68,
    **MLP,
)
def test_mlp_weight_pruning_threshold():
    pass


@pytest.mark.compress(
    prune=GLOBAL_50, max_accuracy_drop=0.02, min_sparsity=0.5, max_size_ratio=0.53, **MLP
)
def test_mlp_weight_pruning_global_50_percent():
    pass


@pytest.mark.compress(prune=MLP_ACTIVATION_PRUNING, max_accuracy_drop=0.005, **MLP)
def test_mlp_activation_pruning():
    pass


@pytest.mark.compress(
    prune=PruneSpec(amount=0.6, scope="global"),
    quantize="int4",
    max_accuracy_drop=0.03,
    max_size_ratio=0.11,
    min_sparsity=0.599,  # round(0.6 * 17,024 weights) = 10,214 pruned: 59.998 %
    **MLP,
)
def test_mlp_deep_compression_prune_60_int4():
    pass
