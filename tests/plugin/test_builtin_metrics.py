"""Built-in metrics chosen by name through the marker and the compress fixture."""

from __future__ import annotations

import textwrap

CONFTEST = textwrap.dedent(
    """
    from types import SimpleNamespace

    import pytest
    import torch
    from torch import nn

    torch.set_num_threads(1)


    class Embedder(nn.Module):  # returns a dict, as sentence-transformers does
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.proj = nn.Linear(16, 32)

        def forward(self, x):
            return {"sentence_embedding": self.proj(x)}


    class TinyLM(nn.Module):  # returns an object with .logits, as a HF causal LM does
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.embed = nn.Embedding(20, 16)
            self.head = nn.Linear(16, 20)

        def forward(self, input_ids, attention_mask=None):
            return SimpleNamespace(logits=self.head(self.embed(input_ids)))


    @pytest.fixture(scope="session")
    def compress_model():
        return Embedder()


    @pytest.fixture(scope="session")
    def compress_data():  # bare inputs: no targets
        generator = torch.Generator().manual_seed(1)
        return [torch.randn(32, 16, generator=generator) for _ in range(3)]


    @pytest.fixture(scope="session")
    def lm():
        return TinyLM()


    @pytest.fixture(scope="session")
    def tokens():
        generator = torch.Generator().manual_seed(2)
        ids = torch.randint(0, 20, (4, 10), generator=generator)
        mask = torch.ones(4, 10, dtype=torch.long)
        mask[0, 6:] = 0
        return [{"input_ids": ids, "attention_mask": mask}]
    """
)


def test_cosine_on_bare_inputs_names_the_output_it_read(pytester):
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(
        """
        import pytest

        @pytest.mark.compress(quantize="int8", metric="cosine", max_accuracy_drop=0.01)
        def test_int8(compression):
            assert compression.metric == "cosine(sentence_embedding)"
            assert compression.float_metric == pytest.approx(1.0)
            assert 0.99 <= compression.compressed_metric <= 1.0 + 1e-6
            assert compression.higher_is_better

        @pytest.mark.compress(quantize="int2", metric="cosine", max_accuracy_drop=0.0001)
        def test_int2_breaks():
            pass

        def test_called(compress):
            result = compress(quantize="int8", metric="mse")
            assert result.metric == "mse(sentence_embedding)" and not result.higher_is_better
            assert result.float_metric == 0.0 and result.compressed_metric > 0
        """
    )
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(passed=2, failed=1)
    result.stdout.fnmatch_lines(["*cosine(sentence_embedding) 1 -> 0.9*: drop * > 0.0001 allowed*"])


def test_perplexity_on_a_causal_lm_is_lower_is_better(pytester):
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(
        """
        import math

        import pytest
        import torch
        import torch.nn.functional as F

        @pytest.mark.compress(quantize="int8", metric="perplexity", model="lm", data="tokens",
                              max_accuracy_drop=5.0)
        def test_int8(compression, lm, tokens):
            batch = tokens[0]
            labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
            with torch.no_grad():
                logits = lm(batch["input_ids"]).logits
            loss = F.cross_entropy(logits[:, :-1].reshape(-1, 20), labels[:, 1:].reshape(-1),
                                   ignore_index=-100)
            assert compression.float_metric == pytest.approx(math.exp(float(loss)), rel=1e-5)
            assert compression.metric == "perplexity(logits)"
            assert not compression.higher_is_better
            assert compression.accuracy_drop == pytest.approx(
                compression.compressed_metric - compression.float_metric)

        @pytest.mark.compress(quantize="int2", metric="perplexity", model="lm", data="tokens",
                              max_accuracy_drop=0.001)
        def test_int2_breaks():
            pass
        """
    )
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(["*perplexity(logits) * -> *: increase * > 0.001 allowed*"])


def test_unknown_metric_name_and_contradicted_direction_are_usage_errors(pytester):
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(
        """
        import pytest

        @pytest.mark.compress(quantize="int8", metric="cosin", max_accuracy_drop=0.01)
        def test_misspelt():
            pass

        @pytest.mark.compress(quantize="int8", metric="top0", max_accuracy_drop=0.01)
        def test_top0():
            pass

        @pytest.mark.compress(quantize="int8", metric="perplexity", higher_is_better=True,
                              model="lm", data="tokens", max_accuracy_drop=0.01)
        def test_contradicted():
            pass
        """
    )
    result = pytester.runpytest("-p", "no:cacheprovider")
    assert result.ret == 4  # pytest's usage error
    result.stderr.fnmatch_lines(
        [
            "*test_misspelt: metric: 'cosin' is no built-in metric and no fixture*"
            "did you mean 'cosine'? the built-ins are top1, top5*",
            "*test_top0: metric: 'top0': top-k accuracy needs k >= 1*",
            "*test_contradicted: higher_is_better: True contradicts the metric perplexity*",
        ]
    )


def test_a_builtin_name_wins_over_a_fixture_of_that_name(pytester):
    pytester.makeconftest(
        CONFTEST
        + textwrap.dedent(
            """
            @pytest.fixture(scope="session")
            def cosine():
                raise AssertionError("the built-in name is reserved: never read")
            """
        )
    )
    pytester.makepyfile(
        """
        import pytest

        @pytest.mark.compress(quantize="int8", metric="cosine", max_accuracy_drop=0.01)
        def test_builtin(compression):
            assert compression.metric == "cosine(sentence_embedding)"
        """
    )
    pytester.runpytest("-p", "no:cacheprovider").assert_outcomes(passed=1)


def test_a_rerun_served_from_the_cache_names_the_same_output(pytester):
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(
        """
        import pytest

        @pytest.mark.compress(quantize="int8", metric="cosine", max_accuracy_drop=0.01)
        def test_int8(compression):
            assert compression.metric == "cosine(sentence_embedding)"
        """
    )
    pytester.runpytest().assert_outcomes(passed=1)
    rerun = pytester.runpytest()
    rerun.assert_outcomes(passed=1)
    rerun.stdout.fnmatch_lines(["*ok (cached)*"])
