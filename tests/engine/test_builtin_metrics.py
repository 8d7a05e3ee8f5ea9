"""The built-in metrics against references written here with torch.nn.functional."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pytest_compress import (
    CompressError,
    builtin_metric,
    cosine_similarity,
    evaluate,
    mean_squared_error,
    perplexity,
    relative_error,
    topk_accuracy,
)
from pytest_compress.engine.measure import metric_source, reference_outputs
from pytest_compress.errors import ModelError
from pytest_compress.metrics import MetricKind

VOCAB = 13


class TinyLM(nn.Module):
    """A causal LM in miniature: embedding + linear, outputs with ``.logits`` (as HF's)."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.embed = nn.Embedding(VOCAB, 8)
        self.head = nn.Linear(8, VOCAB)

    def forward(self, input_ids, attention_mask=None):
        return SimpleNamespace(logits=self.head(self.embed(input_ids)))


class Encoder(nn.Module):
    """Token states (batch, tokens, 6), returned as a dict the way sentence-transformers
    or a ModelOutput would be read: ``last_hidden_state`` and optionally a pooled vector."""

    def __init__(self, seed: int, pooled: bool = False) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.embed = nn.Embedding(VOCAB, 6)
        self.pooled = pooled

    def forward(self, input_ids, attention_mask=None):
        states = self.embed(input_ids)
        out = {"last_hidden_state": states}
        if self.pooled:
            out["sentence_embedding"] = states.mean(1)
        return out


def token_batches(seed: int = 3) -> list[dict[str, torch.Tensor]]:
    generator = torch.Generator().manual_seed(seed)
    batches = []
    for lengths in ([6, 4, 2], [5, 6, 3]):
        ids = torch.randint(0, VOCAB, (3, 6), generator=generator)
        mask = torch.zeros(3, 6, dtype=torch.long)
        for row, length in enumerate(lengths):
            mask[row, :length] = 1
        batches.append({"input_ids": ids, "attention_mask": mask})
    return batches


def test_perplexity_is_exp_of_shifted_cross_entropy_with_padding_ignored():
    model, batches = TinyLM(), token_batches()
    with torch.no_grad():
        logits = torch.cat([model(**b).logits for b in batches])
    labels = torch.cat(
        [b["input_ids"].masked_fill(b["attention_mask"] == 0, -100) for b in batches]
    )
    expected = torch.exp(
        F.cross_entropy(
            logits[:, :-1].reshape(-1, VOCAB), labels[:, 1:].reshape(-1), ignore_index=-100
        )
    )
    assert evaluate(model, batches, "perplexity") == pytest.approx(float(expected), rel=1e-5)
    assert evaluate(model, batches, perplexity()) == pytest.approx(float(expected), rel=1e-5)


def test_perplexity_reads_explicit_labels_and_pairs_and_keeps_labels_from_the_model():
    model, batch = TinyLM(), token_batches()[0]
    labels = batch["input_ids"].clone()
    labels[:, :3] = -100  # score only the continuation
    with torch.no_grad():
        logits = model(batch["input_ids"]).logits
    expected = torch.exp(
        F.cross_entropy(
            logits[:, :-1].reshape(-1, VOCAB), labels[:, 1:].reshape(-1), ignore_index=-100
        )
    )
    # TinyLM.forward takes no labels: the metric must not pass them
    as_dict = evaluate(model, [{**batch, "labels": labels}], "perplexity")
    as_pair = evaluate(model, [(batch["input_ids"], labels)], "perplexity")
    assert as_dict == pytest.approx(float(expected), rel=1e-5)
    assert as_pair == pytest.approx(float(expected), rel=1e-5)


def test_cosine_compares_with_the_float_model_mean_pooled_over_real_tokens():
    float_model, compressed, batches = Encoder(0), Encoder(1), token_batches()
    similarities = []
    with torch.no_grad():
        for batch in batches:
            weight = batch["attention_mask"].unsqueeze(-1).float()

            def pool(model, batch=batch, weight=weight):
                states = model(**batch)["last_hidden_state"]
                return (states * weight).sum(1) / weight.sum(1)

            similarities.append(F.cosine_similarity(pool(compressed), pool(float_model), dim=-1))
    expected = float(torch.cat(similarities).mean())
    assert evaluate(compressed, batches, "cosine", reference=float_model) == pytest.approx(expected)
    kept = reference_outputs(float_model, batches, cosine_similarity(), "cpu")
    assert evaluate(compressed, batches, "cosine", reference=kept) == pytest.approx(expected)
    assert evaluate(float_model, batches, "cosine") == pytest.approx(1.0)  # with itself


def test_padding_changes_nothing_for_cosine_mse_and_relative_error():
    float_model, compressed = Encoder(0), Encoder(1)
    batches = token_batches()
    # other token ids under the padding: the same values when the mask is respected
    repadded = [
        {**b, "input_ids": b["input_ids"].masked_fill(b["attention_mask"] == 0, 7)} for b in batches
    ]
    for name in ("cosine", "mse", "relative_error"):
        before = evaluate(compressed, batches, name, reference=float_model)
        after = evaluate(compressed, repadded, name, reference=float_model)
        assert before == pytest.approx(after), name


def test_mse_and_relative_error_against_references_on_bare_inputs():
    torch.manual_seed(0)
    float_model, compressed = nn.Linear(5, 3), nn.Linear(5, 3)
    data = [torch.randn(4, 5), torch.randn(6, 5)]  # bare inputs: no targets
    with torch.no_grad():
        a = torch.cat([compressed(x) for x in data])
        b = torch.cat([float_model(x) for x in data])
    mse = evaluate(compressed, data, mean_squared_error(), reference=float_model)
    assert mse == pytest.approx(float(F.mse_loss(a, b)), rel=1e-5)
    expected = float(((a - b).norm(dim=1) / b.norm(dim=1)).mean())
    error = evaluate(compressed, data, relative_error(), reference=float_model)
    assert error == pytest.approx(expected, rel=1e-5)
    assert evaluate(float_model, data, "mse") == 0.0


def test_topk_accuracy_matches_a_reference_and_top1_is_the_default():
    torch.manual_seed(0)
    model = nn.Linear(4, 10)
    x = torch.randn(50, 4)
    y = torch.randint(0, 10, (50,))
    with torch.no_grad():
        best = model(x).topk(3, dim=1).indices
    expected = float((best == y[:, None]).any(1).float().mean())
    assert evaluate(model, [(x, y)], topk_accuracy(3)) == pytest.approx(expected)
    assert evaluate(model, [(x, y)], "top3") == pytest.approx(expected)
    assert evaluate(model, [(x, y)], "top1") == evaluate(model, [(x, y)])


def test_outputs_are_read_by_key_and_the_metric_says_which():
    batches = token_batches()
    assert metric_source(TinyLM(), batches, perplexity(), "cpu") == "logits"
    pooled = Encoder(0, pooled=True)
    assert metric_source(pooled, batches, cosine_similarity(), "cpu") == "sentence_embedding"
    assert metric_source(Encoder(0), batches, cosine_similarity(), "cpu") == "last_hidden_state"
    assert metric_source(nn.Linear(5, 3), [torch.randn(2, 5)], builtin_metric("mse"), "cpu") is None
    named = builtin_metric("cosine(last_hidden_state)")
    assert named.kind().name == "cosine(last_hidden_state)"
    assert cosine_similarity().kind("sentence_embedding").name == "cosine(sentence_embedding)"
    with pytest.raises(ModelError, match="'pooler_output'.*keys"):
        evaluate(pooled, batches, "cosine(pooler_output)")


def test_directions_and_units_of_the_builtins():
    kinds = {name: builtin_metric(name).kind() for name in ("top1", "topk", "cosine", "mse")}
    assert kinds["top1"] == MetricKind("accuracy", True, True)
    assert kinds["topk"] == MetricKind("top5", True, True)
    assert kinds["cosine"] == MetricKind("cosine", True, False)
    assert kinds["mse"] == MetricKind("mse", False, False)
    for name in ("relative_error", "perplexity"):
        assert not builtin_metric(name).kind().higher_is_better
    assert MetricKind.named("top5(logits)").percent and not MetricKind.named("cosine").percent


@pytest.mark.parametrize("name", ["cosin(logits)", "top0", "nonsense"])
def test_an_unknown_name_lists_the_builtins(name):
    with pytest.raises(CompressError, match="built-ins are top1, top5"):
        builtin_metric(name)
