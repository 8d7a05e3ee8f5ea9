"""The persistent cache for Hugging Face models, through pytester: a tiny BERT classifier
built offline from its config (random seeded weights, no hub access).

A rerun with nothing changed runs no forward pass of the model; a changed weight or a
changed configuration value that matters (``layer_norm_eps``) measures again.
"""

from __future__ import annotations

import json
import sys
import textwrap

import pytest

from tests.plugin_projects import read_json

CONFTEST = """
import json
import pathlib

import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification

torch.set_num_threads(1)
SETTINGS = json.loads(pathlib.Path("settings.json").read_text())
FORWARDS = []  # every model whose forward ran, one entry per call


class Counted(BertForSequenceClassification):
    def forward(self, **inputs):
        FORWARDS.append(self)
        return super().forward(**inputs)


@pytest.fixture(scope="session")
def compress_model():
    config = BertConfig(
        vocab_size=100,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=32,
        num_labels=3,
        layer_norm_eps=SETTINGS.get("layer_norm_eps", 1e-12),
    )
    torch.manual_seed(0)
    model = Counted(config).eval()
    with torch.no_grad():
        model.classifier.weight[0, 0] += SETTINGS.get("weight", 0.0)
    return model


@pytest.fixture(scope="session")
def compress_data(compress_model):
    generator = torch.Generator().manual_seed(1)
    ids = torch.randint(1, 100, (64, 8), generator=generator)
    batches = [{"input_ids": ids[i:i + 16]} for i in range(0, 64, 16)]
    with torch.no_grad():  # labelled by the float model: its accuracy is 100 %
        data = [(batch, compress_model(**batch).logits.argmax(-1)) for batch in batches]
    FORWARDS.clear()
    return data


def pytest_sessionfinish(session):
    pathlib.Path("forwards.json").write_text(json.dumps(len(FORWARDS)))
"""

CHECKS = """
import pytest

@pytest.mark.compress(quantize="int8", max_accuracy_drop=0.99)
def test_int8():
    pass

@pytest.mark.compress(prune=0.5, max_accuracy_drop=0.99)
def test_pruned():
    pass
"""
BATCHES = 4
MEASURED_ALL = BATCHES * 3  # the float model and two copies, once per batch


@pytest.fixture(autouse=True)
def _fresh_sources(monkeypatch):
    monkeypatch.setattr(sys, "dont_write_bytecode", True)
    monkeypatch.delenv("GITHUB_STEP_SUMMARY", raising=False)


def configure(pytester: pytest.Pytester, **settings: object) -> None:
    (pytester.path / "settings.json").write_text(json.dumps(settings))


def run(pytester: pytest.Pytester) -> pytest.RunResult:
    result = pytester.runpytest("-p", "no:hypothesispytest")
    result.assert_outcomes(passed=2)
    return result


def forwards(pytester: pytest.Pytester) -> int:
    return read_json(pytester.path / "forwards.json")


@pytest.mark.usefixtures("transformers_imported")
def test_a_tiny_bert_is_served_from_the_cache_until_a_weight_or_setting_changes(pytester):
    # transformers as installed; tests/checks/test_fingerprint.py also reads its code as a
    # user's own (an editable install), the way the original report failed
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(test_project=textwrap.dedent(CHECKS))
    configure(pytester)
    first = run(pytester)
    assert forwards(pytester) == MEASURED_ALL
    first.stdout.no_fnmatch_line("*not cached*")

    second = run(pytester)
    assert forwards(pytester) == 0
    second.stdout.fnmatch_lines(
        [
            "test_project.py::test_int8 * ok (cached)",
            "test_project.py::test_pruned * ok (cached)",
            "cache: 2 of 2 checks reused from an earlier run*",
        ]
    )

    for change in ({"weight": 1e-3}, {"layer_norm_eps": 1e-5}):
        configure(pytester, **change)
        run(pytester)
        assert forwards(pytester) == MEASURED_ALL, change
        run(pytester)  # and the new numbers are cached in turn
        assert forwards(pytester) == 0, change


FINGERPRINTS = """
import sys
import torch
from transformers import BertConfig, BertModel, GPT2Config, GPT2LMHeadModel, ViTConfig, ViTModel
from pytest_compress.checks.fingerprint import model_fingerprint

torch.set_num_threads(1)
SIZES = {"num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 16}
builders = {
    "gpt2": lambda: GPT2LMHeadModel(GPT2Config(vocab_size=50, n_embd=16, n_layer=1, n_head=2)),
    "bert": lambda: BertModel(BertConfig(vocab_size=50, hidden_size=16, **SIZES)),
    "vit": lambda: ViTModel(ViTConfig(hidden_size=16, image_size=8, patch_size=4, **SIZES)),
}
for name, build in builders.items():
    torch.manual_seed(0)
    print(name, model_fingerprint(build().eval()))
"""


@pytest.mark.usefixtures("transformers_imported")
def test_hugging_face_fingerprints_agree_across_processes(tmp_path, capsys):
    """What a model holds that a process makes up (GenerationConfig's _original_object_hash
    is hash(self)) must not reach the fingerprint: a rerun would then never hit the cache."""
    import os
    import runpy
    import subprocess

    script = tmp_path / "fingerprints.py"
    script.write_text(FINGERPRINTS)
    environment = {**os.environ, "PYTHONHASHSEED": "1", "TRANSFORMERS_VERBOSITY": "error"}
    done = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, env=environment
    )
    assert done.returncode == 0, done.stderr
    runpy.run_path(str(script))  # this process: other object ids, another str hash seed
    here = capsys.readouterr().out.split()
    assert done.stdout.split() == here and len(here) == 6
