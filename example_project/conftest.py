"""What the compression checks run on: the trained models and the held-out digits.

Every check evaluates on the test split, which training never saw; activation ranges
are calibrated on the validation split, and recovery fine-tunes on the training split.
"""

import digits
import nets
import pytest

from pytest_compress.tuning.recovery import finetune


@pytest.fixture(scope="session")
def compress_model():
    """The LeNet-5-style CNN of the classic PyTorch CIFAR-10 tutorial, trained on the digits'
    training split."""
    return nets.load(nets.Net(), nets.LENET_CHECKPOINT)


@pytest.fixture(scope="session")
def compress_data():
    """Held-out test images for the LeNet."""
    return digits.loader(digits.split("images").test)


@pytest.fixture(scope="session")
def compress_calibration_data():
    """Validation images: activation observers never see the test split."""
    return digits.loader(digits.split("images").validation)


@pytest.fixture(scope="session")
def compress_train_data():
    """The training split: what recovery fine-tunes on (never the test split it is measured on)."""
    return digits.loader(digits.split("images").train)


@pytest.fixture(scope="session")
def short_finetune():
    """Recovery for a pruned LeNet: one seeded epoch of Adam (lr 1e-3), pruned weights held at 0."""
    return finetune(epochs=1, lr=1e-3)


@pytest.fixture(scope="session")
def digits_mlp():
    """The MLP on flat 8x8 digits."""
    return nets.load(nets.mlp(), nets.MLP_CHECKPOINT)


@pytest.fixture(scope="session")
def digits_vectors():
    """Held-out test digits as flat vectors, for the MLP."""
    return digits.loader(digits.split("vectors").test)


@pytest.fixture(scope="session")
def digits_vectors_validation():
    """Validation digits as flat vectors: the MLP's calibration data."""
    return digits.loader(digits.split("vectors").validation)


@pytest.fixture(scope="session")
def digit_encoder():
    """A tiny transformer encoder of the digits (seeded random weights)."""
    return nets.digit_encoder()


@pytest.fixture(scope="session")
def digit_tokens():
    """Held-out test digits as 64 token ids each, without labels."""
    return digits.token_batches(digits.split("tokens").test)


@pytest.fixture(scope="session")
def digit_tokens_validation():
    """Validation digits as tokens: the encoder's calibration data."""
    return digits.token_batches(digits.split("tokens").validation)
