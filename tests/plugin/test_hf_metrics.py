"""Built-in metrics on real (tiny, offline) Hugging Face models, through the marker.

A GPT-2-style causal LM gated by perplexity on bare token batches (labels from the
input ids, padding ignored), a BERT-style encoder by cosine similarity of its hidden
states (no targets), and a BERT classifier by top-1 accuracy of its ``.logits``.
"""

from __future__ import annotations

import json
import textwrap

import pytest

CONFTEST = """
import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification, BertModel, GPT2Config
from transformers import GPT2LMHeadModel

torch.set_num_threads(1)
SIZES = {"num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64}


def tokens(seed, with_mask):
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, 100, (8, 12), generator=generator)
    mask = torch.ones_like(ids)
    mask[:, 9:] = 0  # the last three positions are padding
    batch = {"input_ids": ids * mask}
    if with_mask:
        batch["attention_mask"] = mask
    return batch


@pytest.fixture(scope="session")
def causal_lm():
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=100, n_embd=32, n_layer=2, n_head=2, pad_token_id=0)
    return GPT2LMHeadModel(config).eval()


@pytest.fixture(scope="session")
def encoder():
    torch.manual_seed(0)
    return BertModel(BertConfig(vocab_size=100, hidden_size=32, **SIZES)).eval()


@pytest.fixture(scope="session")
def classifier():
    torch.manual_seed(0)
    config = BertConfig(vocab_size=100, hidden_size=32, num_labels=3, **SIZES)
    return BertForSequenceClassification(config).eval()


@pytest.fixture(scope="session")
def token_batches():
    return [tokens(seed, with_mask=True) for seed in range(3)]


@pytest.fixture(scope="session")
def labelled_batches(classifier):
    batches = [tokens(seed, with_mask=True) for seed in range(3)]
    with torch.no_grad():
        return [(batch, classifier(**batch).logits.argmax(-1)) for batch in batches]
"""

TESTS = """
import json
import pytest

def record(name, result):
    with open(f"{name}.json", "w") as stream:
        json.dump(result.to_dict(), stream)

@pytest.mark.compress(quantize="int8", model="causal_lm", data="token_batches",
                      metric="perplexity", max_relative_drop=0.05)
def test_perplexity(compression):
    record("perplexity", compression)

@pytest.mark.compress(quantize="int8", model="encoder", data="token_batches",
                      metric="cosine", max_accuracy_drop=0.01)
def test_cosine(compression):
    record("cosine", compression)

@pytest.mark.compress(quantize="int8", model="classifier", data="labelled_batches",
                      max_accuracy_drop=0.5)
def test_top1(compression):
    record("top1", compression)
"""


@pytest.mark.usefixtures("transformers_imported")
def test_built_in_metrics_read_hugging_face_outputs(pytester: pytest.Pytester) -> None:
    pytester.makeconftest(textwrap.dedent(CONFTEST))
    pytester.makepyfile(test_hf=textwrap.dedent(TESTS))
    result = pytester.runpytest("-p", "no:cacheprovider", "-p", "no:hypothesispytest")
    result.assert_outcomes(passed=3)

    def recorded(name: str) -> dict:
        return json.loads((pytester.path / f"{name}.json").read_text())

    perplexity, cosine, top1 = recorded("perplexity"), recorded("cosine"), recorded("top1")
    assert perplexity["metric"] == "perplexity(logits)" and not perplexity["higher_is_better"]
    assert perplexity["float_metric"] == pytest.approx(reference_perplexity(), rel=1e-5)
    assert cosine["metric"] == "cosine(last_hidden_state)"
    assert cosine["float_metric"] == pytest.approx(1.0)
    assert 0.99 <= cosine["compressed_metric"] <= 1.0
    assert (top1["metric"], top1["float_metric"]) == ("accuracy", 1.0)


def reference_perplexity() -> float:
    """The float GPT-2's perplexity on the same batches, in plain torch: next-token cross
    entropy over the real (unpadded) positions, exp of the mean."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    config = GPT2Config(vocab_size=100, n_embd=32, n_layer=2, n_head=2, pad_token_id=0)
    model = GPT2LMHeadModel(config).eval()
    total, count = 0.0, 0
    for seed in range(3):
        generator = torch.Generator().manual_seed(seed)
        ids = torch.randint(1, 100, (8, 12), generator=generator)
        mask = torch.ones_like(ids)
        mask[:, 9:] = 0
        with torch.no_grad():
            logits = model(input_ids=ids * mask, attention_mask=mask).logits
        labels = (ids * mask).masked_fill(mask == 0, -100)[:, 1:]
        loss = torch.nn.functional.cross_entropy(
            logits[:, :-1].reshape(-1, 100), labels.reshape(-1), ignore_index=-100, reduction="sum"
        )
        total, count = total + float(loss), count + int((labels != -100).sum())
    return float(torch.exp(torch.tensor(total / count)))


DEFAULTS = """
import json
import pytest
from pytest_compress import TRANSFORMER_EXCLUDE, QuantSpec

def record(name, result):
    with open(f"{name}.json", "w") as stream:
        json.dump(result.to_dict(), stream)

@pytest.mark.compress(quantize="w8a8-dynamic", model="encoder", data="token_batches",
                      metric="cosine", max_accuracy_drop=0.02)
def test_dynamic(compression):
    record("dynamic", compression)

@pytest.mark.compress(
    quantize=QuantSpec(bits=4, activation_bits=8, observer="dynamic", exclude=TRANSFORMER_EXCLUDE),
    model="classifier", data="labelled_batches", max_accuracy_drop=0.5)
def test_blocks_only(compression):
    record("blocks_only", compression)
"""


@pytest.mark.usefixtures("transformers_imported")
def test_transformer_defaults_on_hugging_face_models(pytester: pytest.Pytester) -> None:
    """w8a8-dynamic needs no calibration data; the presets keep BERT's three token tables
    and its classifier head float, and the result says which preset left each float."""
    pytester.makeconftest(textwrap.dedent(CONFTEST))
    pytester.makepyfile(test_hf=textwrap.dedent(DEFAULTS))
    result = pytester.runpytest("-p", "no:cacheprovider", "-p", "no:hypothesispytest")
    result.assert_outcomes(passed=2)
    dynamic = json.loads((pytester.path / "dynamic.json").read_text())
    assert dynamic["recipe"] == "w8a8 (dynamic per-token) per-channel"
    assert dynamic["quantize"]["observer"] == "dynamic"
    assert 0.98 <= dynamic["compressed_metric"] < 1.0  # activations rounded: not exact
    blocks = json.loads((pytester.path / "blocks_only.json").read_text())
    skipped = blocks["skipped_layers"]
    for table in ("word_embeddings", "position_embeddings", "token_type_embeddings"):
        assert skipped[f"bert.embeddings.{table}"].startswith("left float by the @embeddings")
    assert skipped["classifier"].startswith("left float by the @head preset")
    assert "bert.encoder.layer.0.attention.self.query" not in skipped
