"""The low-memory mode: a shallow clone holding packed weights gives the deep copy's numbers.

Every recipe is compressed both ways and compared value by value: outputs, each weight,
the file (byte for byte), its size, sparsity and the recipe-invariant gate. What the clone
holds is counted: each uncompressed tensor is the user's own, each compressed one is its
codes (a quarter of float32 at 8 bits, an eighth at 4), its format's elements or a mask.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from pytest_compress.engine.apply import compress_model, low_memory_mode, working_copy
from pytest_compress.engine.invariants import verify_recipe
from pytest_compress.engine.lazy import (
    LazyWeight,
    MaskedValues,
    PackedCodes,
    RoundedValues,
    held_bytes,
    lazy_weights,
    move_clone,
    shallow_clone,
)
from pytest_compress.engine.measure import sparsity
from pytest_compress.engine.specs import PruneSpec, QuantSpec, as_prune_spec, as_quant_spec
from pytest_compress.errors import ModelError
from pytest_compress.fileformat.container import compressed_size, load_compressed, save_compressed


def seeded(model: nn.Module, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    for module in model.modules():
        if hasattr(module, "reset_parameters"):
            module.reset_parameters()
    return model.eval()


class Tied(nn.Module):
    """A language-model shape: embedding, a block, and a head sharing the embedding."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(40, 24)
        self.norm = nn.LayerNorm(24)
        self.up = nn.Linear(24, 64)
        self.down = nn.Linear(64, 24)
        self.head = nn.Linear(24, 40, bias=False)
        self.head.weight = self.embed.weight

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.norm(self.embed(tokens))
        x = x + self.down(torch.relu(self.up(x)))
        return self.head(x)


def lenet() -> nn.Module:
    return seeded(
        nn.Sequential(
            nn.Conv2d(1, 6, 3),
            nn.ReLU(),
            nn.Conv2d(6, 8, 3),
            nn.Flatten(),
            nn.Linear(8 * 4 * 4, 32),
            nn.ReLU(),
            nn.Linear(32, 10),
        )
    )


IMAGES = torch.randn(6, 1, 8, 8, generator=torch.Generator().manual_seed(1))
TOKENS = torch.randint(0, 40, (5, 7), generator=torch.Generator().manual_seed(2))

RECIPES = [
    ("int8", None),
    ("int4", None),
    ("int3-mse", None),
    (QuantSpec(bits=4, group_size=16, allow_short_rows=True), None),
    (QuantSpec(bits=8, parameters="all", per_channel=False), None),
    ("fp8-e4m3", None),
    ("fp16", None),
    ("bf16", None),
    ("w8a8", None),
    ("int4-gptq", None),
    (None, 0.8),
    (None, PruneSpec(amount=0.6, scope="global")),
    (None, "2:4"),
    (None, PruneSpec(amount=0.5, structure="channel")),
    (None, PruneSpec(threshold=0.3, activation_threshold=0.1)),
    ("int8", 0.5),
    ("int4", PruneSpec(amount=0.7, scope="global")),
    ("int4-gptq", "2:4"),
]


def both(model: nn.Module, quantize, prune, calibration) -> tuple[nn.Module, nn.Module]:
    kwargs = {"quantize": quantize, "prune": prune, "calibration_data": calibration}
    return compress_model(model, **kwargs), compress_model(model, low_memory=True, **kwargs)


def values(t: torch.Tensor) -> torch.Tensor:
    return t.values() if isinstance(t, LazyWeight) else t


@pytest.mark.parametrize("make, inputs", [(lenet, IMAGES), (lambda: seeded(Tied()), TOKENS)])
@pytest.mark.parametrize("quantize, prune", RECIPES, ids=repr)
def test_the_low_memory_clone_gives_the_deep_copys_numbers(
    make, inputs, quantize, prune, tmp_path
) -> None:
    model = make()
    deep, lazy = both(model, quantize, prune, [inputs])
    assert lazy_weights(lazy), "the recipe held nothing packed"
    with torch.no_grad():
        assert torch.equal(deep(inputs), lazy(inputs))
    deep_state, lazy_state = deep.state_dict(), lazy.state_dict()
    assert deep_state.keys() == lazy_state.keys()
    for key, value in deep_state.items():
        assert torch.equal(value, values(lazy_state[key])), key
    assert compressed_size(deep) == compressed_size(lazy)
    assert sparsity(deep) == sparsity(lazy)
    save_compressed(deep, tmp_path / "deep.pcz")
    save_compressed(lazy, tmp_path / "lazy.pcz")
    assert (tmp_path / "deep.pcz").read_bytes() == (tmp_path / "lazy.pcz").read_bytes()
    loaded = load_compressed(tmp_path / "lazy.pcz", make())
    with torch.no_grad():
        assert torch.equal(loaded(inputs), deep(inputs))
    q, p = as_quant_spec(quantize), as_prune_spec(prune)
    assert verify_recipe(model, deep, q, p) == verify_recipe(model, lazy, q, p) == []


def test_the_clone_holds_mappings_and_shares_every_other_tensor() -> None:
    model = seeded(nn.Sequential(nn.Linear(256, 512), nn.LayerNorm(512), nn.Linear(512, 128)))
    rows = model[0].out_features + model[2].out_features
    for spec, per_row in (("int8", 4 + 4), ("int4-mse", 4 + 4), ("fp8-e4m3", 4), ("bf16", 0)):
        lazy = compress_model(model, quantize=spec, low_memory=True)
        for name, tensor in lazy.named_parameters():
            if isinstance(tensor, RoundedValues):
                assert tensor.source.data_ptr() == model.get_parameter(name).data_ptr(), name
            else:
                assert tensor.data_ptr() == model.get_parameter(name).data_ptr(), name
        # a float32 scale (and an int32 zero point) per row: no codes, no values
        assert held_bytes(lazy) == rows * per_row, spec
    gptq = compress_model(
        model, quantize="int4-gptq", calibration_data=[torch.randn(8, 256)], low_memory=True
    )
    codes = lazy_weights(gptq)
    assert all(isinstance(w, PackedCodes) for w in codes.values())
    weights = model[0].weight.numel() + model[2].weight.numel()
    assert held_bytes(gptq) == weights // 2 + rows * (4 + 4)  # two codes per byte
    pruned = compress_model(model, prune=0.9, low_memory=True)
    masked = lazy_weights(pruned)
    assert all(isinstance(w, MaskedValues) for w in masked.values())
    assert all(w.source.data_ptr() == model.get_parameter(n).data_ptr() for n, w in masked.items())
    assert held_bytes(pruned) == sum(-(-w.numel() // 8) for w in masked.values())  # a bit each


def test_weight_kinds_follow_the_recipe() -> None:
    model = lenet()
    calibration = [IMAGES]
    kinds = {
        ("int8", None): {RoundedValues},
        ("fp8-e4m3", None): {RoundedValues},
        (None, 0.5): {MaskedValues},
        ("int4-gptq", None): {PackedCodes},
    }
    for (q, p), kind in kinds.items():
        lazy = compress_model(
            model, quantize=q, prune=p, calibration_data=calibration, low_memory=True
        )
        assert {type(w) for w in lazy_weights(lazy).values()} == kind
    both_ways = compress_model(model, quantize="int8", prune=0.5, low_memory=True)
    rounded = next(iter(lazy_weights(both_ways).values()))
    assert isinstance(rounded, RoundedValues) and isinstance(rounded.source, MaskedValues)
    int4 = compress_model(
        model, quantize="int4-gptq", calibration_data=calibration, low_memory=True
    )
    packed = next(iter(lazy_weights(int4).values()))
    assert isinstance(packed, PackedCodes) and packed.nibbles
    assert packed.packed.numel() == -(-packed.numel() // 2)  # two codes per byte


def test_a_bf16_model_stays_bf16() -> None:
    model = lenet().to(torch.bfloat16)
    lazy = compress_model(model, quantize="bf16", low_memory=True)
    for weight in lazy_weights(lazy).values():
        assert weight.dtype == torch.bfloat16 and weight.values().dtype == torch.bfloat16
    int8 = compress_model(model, quantize="int8", low_memory=True)
    assert all(w.values().dtype == torch.bfloat16 for w in lazy_weights(int8).values())
    with torch.no_grad():
        deep = compress_model(model, quantize="int8")
        assert torch.equal(deep(IMAGES.bfloat16()), int8(IMAGES.bfloat16()))


def test_the_mode_applies_within_its_block_and_an_argument_wins() -> None:
    model = lenet()
    with low_memory_mode():
        assert lazy_weights(compress_model(model, quantize="int8"))
        assert not lazy_weights(compress_model(model, quantize="int8", low_memory=False))
    assert not lazy_weights(compress_model(model, quantize="int8"))


def test_the_clone_owns_its_tables_and_follows_attribute_references() -> None:
    class Aliased(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.blocks = nn.ModuleList([nn.Linear(4, 4), nn.Linear(4, 4)])
            self.first = self.blocks[0]  # registered twice: one module
            self.by_hand = [self.blocks[1]]  # a plain list of a registered module
            self.register_buffer("steps", torch.zeros(()))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            self.steps += 1  # a forward that updates a buffer in place
            return self.by_hand[0](self.first(x))

    model = seeded(Aliased())
    clone = shallow_clone(model)
    assert clone.first is clone.blocks[0] and clone.by_hand[0] is clone.blocks[1]
    assert clone.blocks is not model.blocks and clone._parameters is not model._parameters
    clone(torch.ones(1, 4))
    assert float(model.steps) == 0.0 and float(clone.steps) == 1.0
    lazy = compress_model(model, quantize="int4", low_memory=True)
    with torch.no_grad():
        deep = compress_model(model, quantize="int4")
        assert torch.equal(deep(torch.ones(2, 4)), lazy(torch.ones(2, 4)))


def test_torch_pruned_weights_are_folded_in_the_clone_only() -> None:
    model = lenet()
    torch.nn.utils.prune.l1_unstructured(model[4], "weight", amount=0.5)
    original = model[4].weight_orig.detach().clone()
    clone = working_copy(model, low_memory=True)
    assert "weight_orig" in dict(model[4].named_parameters())
    assert torch.equal(model[4].weight_orig, original)  # prune.remove would have written it
    assert torch.equal(clone[4].weight, model[4].weight)
    deep, lazy = both(model, "int8", None, None)
    with torch.no_grad():
        assert torch.equal(deep(IMAGES), lazy(IMAGES))


def test_a_packed_weight_survives_deepcopy_and_pickling_as_its_values(tmp_path) -> None:
    lazy = compress_model(lenet(), quantize="int4", prune=0.5, low_memory=True)
    copied = copy.deepcopy(lazy)
    with torch.no_grad():
        assert torch.equal(copied(IMAGES), lazy(IMAGES))
    first = next(iter(lazy_weights(copied).values()))
    assert isinstance(first, RoundedValues) and isinstance(first.source, MaskedValues)
    torch.save(lazy.state_dict(), tmp_path / "state.pt")
    state = torch.load(tmp_path / "state.pt")
    assert all(type(value) is torch.Tensor for value in state.values())
    target = lenet()
    target.load_state_dict(state)
    with torch.no_grad():
        assert torch.equal(target(IMAGES), lazy(IMAGES))


def test_moving_a_clone_to_another_device_leaves_the_users_tensors_where_they_are() -> None:
    model = lenet()
    lazy = compress_model(model, quantize="int8", prune=0.5, low_memory=True)
    move_clone(lazy, "meta")
    assert all(t.device.type == "meta" for t in (*lazy.parameters(), *lazy.buffers()))
    assert all(t.device.type == "cpu" for t in (*model.parameters(), *model.buffers()))
    weight = next(iter(lazy_weights(lazy).values()))
    assert isinstance(weight, RoundedValues) and weight.source.device.type == "meta"


def tiny_transformers() -> list[nn.Module]:
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    return [
        transformers.GPT2LMHeadModel(  # Conv1D projections, tied head
            transformers.GPT2Config(
                n_layer=2,
                n_head=2,
                n_embd=32,
                vocab_size=100,
                n_positions=16,
                bos_token_id=0,
                eos_token_id=0,
            )
        ),
        transformers.LlamaForCausalLM(  # grouped-query attention, rotary buffers
            transformers.LlamaConfig(
                num_hidden_layers=2,
                hidden_size=32,
                num_attention_heads=2,
                num_key_value_heads=1,
                intermediate_size=64,
                vocab_size=100,
                tie_word_embeddings=True,
            )
        ),
    ]


@pytest.mark.parametrize("quantize, prune", [("int8", None), ("int4-g16", 0.5)])
def test_hugging_face_models_give_the_same_logits_in_both_modes(quantize, prune) -> None:
    tokens = torch.randint(0, 100, (2, 8), generator=torch.Generator().manual_seed(3))
    for model in tiny_transformers():
        model.eval()
        deep, lazy = both(model, quantize, prune, None)
        with torch.no_grad():
            assert torch.equal(deep(input_ids=tokens).logits, lazy(input_ids=tokens).logits)
        assert compressed_size(deep) == compressed_size(lazy)
        assert sparsity(deep) == sparsity(lazy)


def test_evaluating_on_another_device_in_the_mode_copies_nothing_in_host_memory(
    monkeypatch,
) -> None:
    from pytest_compress.engine import measure

    model = lenet()
    monkeypatch.setattr(measure, "copy_model", lambda m: pytest.fail("deep copy in the mode"))
    with low_memory_mode():
        moved = measure._on_device(model, torch.device("meta"))
    assert all(t.device.type == "meta" for t in moved.parameters())
    assert all(t.device.type == "cpu" for t in model.parameters())


def test_writing_into_a_lazy_weight_is_refused_by_name() -> None:
    lazy = compress_model(lenet(), quantize="int8", low_memory=True)
    weight = lazy[4].weight
    for write in (
        lambda: weight.mul_(2),
        lambda: weight.copy_(torch.zeros_like(weight.values())),
        lambda: torch.add(weight.values(), 1, out=weight),
    ):
        with pytest.raises(ModelError, match="writes into a weight the low-memory mode holds"):
            write()
    assert torch.equal(weight.values(), compress_model(lenet(), quantize="int8")[4].weight)
