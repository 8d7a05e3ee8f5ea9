"""Fingerprints: equal for the same model, data or metric, different after any change."""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import enum
import functools
import json
import os
import subprocess
import sys
import textwrap
import threading

import pytest
import torch
from torch import nn

from pytest_compress.checks.fingerprint import (
    DataDigest,
    Unfingerprintable,
    environment_fingerprint,
    metric_fingerprint,
    model_fingerprint,
)
from pytest_compress.engine.measure import model_metric
from tests.models import Net, seeded

USER_MODULE = """
import torch
from torch import nn

SHIFT = {shift}


def helper(x):
    return x * {factor}


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 3)

    def forward(self, x):{blank}
        return helper(self.fc(x)) + SHIFT
"""


def user_class(shift: float = 0.0, factor: float = 1.0, blank: str = "") -> type:
    """``Net`` compiled from source, as if the user's module had been edited."""
    source = USER_MODULE.format(shift=shift, factor=factor, blank=blank)
    namespace: dict = {"__name__": "user_models"}
    exec(compile(source, "user_models.py", "exec"), namespace)
    return namespace["Net"]


def user_model(**edits: object) -> nn.Module:
    torch.manual_seed(0)
    return user_class(**edits)()


def test_the_same_model_gives_the_same_fingerprint() -> None:
    model = seeded(Net())
    assert model_fingerprint(model) == model_fingerprint(model)
    assert model_fingerprint(copy.deepcopy(model)) == model_fingerprint(model)
    assert model_fingerprint(seeded(Net())) == model_fingerprint(model)
    assert model_fingerprint(user_model()) == model_fingerprint(user_model())


def test_the_train_flag_does_not_count() -> None:
    # evaluation always runs in eval mode, so the flag cannot change a measurement
    model = seeded(Net())
    assert model_fingerprint(model.train()) == model_fingerprint(copy.deepcopy(model).eval())


def test_one_weight_changed_by_one_ulp_changes_it() -> None:
    model = seeded(Net())
    changed = copy.deepcopy(model)
    with torch.no_grad():
        value = changed.fc2.weight[3, 7]
        changed.fc2.weight[3, 7] = torch.nextafter(value, value + 1)
    assert model_fingerprint(changed) != model_fingerprint(model)


def test_buffers_dtypes_settings_and_hooks_change_it() -> None:
    base = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU())
    reference = model_fingerprint(base)

    buffer = copy.deepcopy(base)
    buffer[1].running_mean[0] = 0.5
    stride = copy.deepcopy(base)
    stride[0].stride = (2, 2)
    inplace = copy.deepcopy(base)
    inplace[2].inplace = True
    gelu = copy.deepcopy(base)
    gelu[2] = nn.GELU()
    double = copy.deepcopy(base).double()
    hooked = copy.deepcopy(base)
    hooked[2].register_forward_hook(lambda module, args, output: output * 2)
    variants = [buffer, stride, inplace, gelu, double, hooked]
    prints = [model_fingerprint(variant) for variant in variants]
    assert reference not in prints and len(set(prints)) == len(variants)


def test_editing_the_models_code_changes_it() -> None:
    reference = model_fingerprint(user_model())
    assert model_fingerprint(user_model(factor=2.0)) != reference  # a helper it calls
    assert model_fingerprint(user_model(shift=0.5)) != reference  # a constant it reads


def test_moving_code_without_changing_it_does_not() -> None:
    # a blank line (a comment) shifts the line numbers only
    assert model_fingerprint(user_model(blank="\n")) == model_fingerprint(user_model())


def test_a_model_holding_an_unreadable_value_cannot_be_fingerprinted() -> None:
    # a generator's position cannot be read, and the next value may change an output
    model = nn.Sequential(nn.Linear(2, 2), nn.Sequential(nn.ReLU()))
    model[1][0].stream = iter(i for i in range(3))
    with pytest.raises(Unfingerprintable) as raised:
        model_fingerprint(model)
    assert str(raised.value) == "a builtins.generator (attribute 1.0.stream)"
    model = nn.Linear(2, 2)
    model.stream = (i for i in range(3))
    with pytest.raises(Unfingerprintable, match=r"\(attribute stream\)$"):
        model_fingerprint(model)


def accuracy(outputs, targets):
    return (outputs.argmax(1) == targets).sum(), len(targets)


def errors(outputs, targets):
    return (outputs.argmax(1) != targets).sum(), len(targets)


def test_metrics_differ_by_code_kind_and_captured_values() -> None:
    def scaled(scale: float):
        def metric(outputs, targets):
            return (outputs.argmax(1) == targets).sum() * scale, len(targets)

        return metric

    class Thresholded:
        def __init__(self, threshold: float) -> None:
            self.threshold = threshold

        def __call__(self, outputs, targets):
            return (outputs.max(1).values > self.threshold).sum(), len(targets)

    prints = [
        metric_fingerprint(None),
        metric_fingerprint(accuracy),
        metric_fingerprint(errors),
        metric_fingerprint(model_metric(accuracy)),
        metric_fingerprint(scaled(1.0)),
        metric_fingerprint(scaled(2.0)),
        metric_fingerprint(functools.partial(scaled(1.0))),
        metric_fingerprint(Thresholded(0.5)),
        metric_fingerprint(Thresholded(0.6)),
    ]
    assert len(set(prints)) == len(prints)
    assert metric_fingerprint(scaled(2.0)) == metric_fingerprint(scaled(2.0))
    assert metric_fingerprint(Thresholded(0.5)) == metric_fingerprint(Thresholded(0.5))


def test_data_digest_is_idempotent_and_counts_batches() -> None:
    digest = DataDigest()
    digest.update((torch.zeros(2), torch.ones(2)))
    first = digest.hexdigest()
    assert first is not None and digest.hexdigest() == first
    with pytest.raises(RuntimeError):
        digest.update(torch.zeros(1))
    empty = DataDigest()
    assert empty.hexdigest() != first


SCRIPT = """
import json, sys, torch
from torch import nn
from pytest_compress.checks.fingerprint import environment_fingerprint, metric_fingerprint
from pytest_compress.checks.fingerprint import model_fingerprint

def metric(outputs, targets, names={"a", "b", "c", "d"}):
    return sum(1 for n in names if n in {"b", "c", "x"}), 1  # set constants

torch.manual_seed(0)
model = nn.Sequential(nn.Linear(3, 4), nn.ReLU())
model.labels = {"cat", "dog", "eel"}
RESULT = [model_fingerprint(model), metric_fingerprint(metric), environment_fingerprint()]

"""


def test_fingerprints_are_the_same_in_another_process() -> None:
    # String hashing, and so the order of sets, differs between processes: one other
    # process, whose string hashes provably differ from ours, against this one.
    script = textwrap.dedent(SCRIPT)
    ours: dict = {"__name__": "__main__"}  # as in `python -c`: the metric's module
    with torch.random.fork_rng():  # the script seeds torch: leave our generator alone
        exec(script, ours)
    script += 'print(json.dumps([*RESULT, hash("a string")]))\n'
    for seed in ("1", "2"):
        environment = {**os.environ, "PYTHONHASHSEED": seed}
        done = subprocess.run(
            [sys.executable, "-c", script],
            capture_output=True,
            text=True,
            check=True,
            env=environment,
        )
        *theirs, their_hash = json.loads(done.stdout)
        if their_hash != hash("a string"):
            break
    else:
        pytest.fail("two hash seeds gave this process's string hashes")
    assert theirs == ours["RESULT"]
    assert theirs[2] == environment_fingerprint()


GLOBALS_MODULE = """
import logging
import threading

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

LOG = logging.getLogger("user_globals")
TABLE = torch.zeros(3)
ARRAY = np.zeros(3)
SETTINGS = {"gain": 1.0, "nested": [1, 2]}
SETTINGS["self"] = SETTINGS  # a cycle
STREAM = None


class Config:
    def __init__(self):
        self.offset = 0.0


CONFIG = Config()


def helper(x):
    return x * SETTINGS["gain"] + float(ARRAY.sum())


class Net(nn.Module):
    SCALE = 1.0

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3, 3)

    def forward(self, x):
        LOG.debug("forward")
        if STREAM is not None:
            pass
        return F.relu(helper(self.fc(x)) + TABLE + CONFIG.offset) * self.SCALE
"""


def test_every_global_a_models_methods_read_is_hashed_by_value() -> None:
    namespace: dict = {"__name__": "user_globals"}
    exec(compile(GLOBALS_MODULE, "user_globals.py", "exec"), namespace)
    model = namespace["Net"]()
    prints = [model_fingerprint(model)]
    assert model_fingerprint(model) == prints[0]  # the cycle and the logger are stable
    edits = [
        lambda: namespace["TABLE"].__setitem__(0, 1.0),  # a tensor
        lambda: namespace["ARRAY"].__setitem__(1, 2.0),  # an array, via a helper
        lambda: namespace["SETTINGS"]["nested"].append(3),  # a nested list in a dict
        lambda: setattr(namespace["CONFIG"], "offset", 0.5),  # a plain object
        lambda: setattr(namespace["Net"], "SCALE", 2.0),  # a class attribute
    ]
    for edit in edits:
        edit()
        prints.append(model_fingerprint(model))
    assert len(set(prints)) == len(prints)
    namespace["STREAM"] = (i for i in range(3))
    with pytest.raises(Unfingerprintable, match=r"generator \(global STREAM read by Net"):
        model_fingerprint(model)


def test_installed_code_is_named_not_followed() -> None:
    # torch.nn.functional reads globals of its own (some unfingerprintable): never followed
    def metric(outputs, targets):
        return (torch.nn.functional.softmax(outputs, 1).argmax(1) == targets).sum(), 1

    assert metric_fingerprint(metric) == metric_fingerprint(metric)


class Mode(enum.Enum):
    FAST = "fast"
    EXACT = "exact"


@dataclasses.dataclass
class Settings:
    gain: float
    mode: Mode


@dataclasses.dataclass(frozen=True, slots=True)
class Frozen:
    scale: float


class LookalikeConfig:
    """A configuration as transformers shapes one (``to_dict()``, a class-level
    ``model_type``), without importing transformers."""

    model_type = "lookalike"

    def __init__(self, eps: float) -> None:
        self.eps = eps
        self._attn_implementation_internal = "eager"
        self.cached = (i for i in range(3))  # to_dict() leaves it out

    def to_dict(self) -> dict:
        return {"eps": self.eps, "model_type": self.model_type}


@contextlib.contextmanager
def quiet(level: int):
    yield level


def test_plain_data_settings_are_hashed_and_stateless_objects_allowed() -> None:
    def build(**changes: object) -> nn.Module:
        torch.manual_seed(0)
        model = nn.Linear(2, 2)
        settings = {
            "settings": Settings(1.0, Mode.FAST),
            "frozen": Frozen(2.0),
            "config": LookalikeConfig(1e-12),
            "lock": threading.Lock(),
            "guard": quiet(1),  # a @contextmanager object: its function and arguments
            "sentinel": object(),
        }
        for name, value in {**settings, **changes}.items():
            setattr(model, name, value)
        return model

    reference = model_fingerprint(build())
    assert model_fingerprint(build()) == reference
    changed = [
        build(settings=Settings(1.0, Mode.EXACT)),
        build(settings=Settings(1.5, Mode.FAST)),
        build(frozen=Frozen(3.0)),
        build(config=LookalikeConfig(1e-5)),
        build(guard=quiet(2)),
    ]
    prints = {model_fingerprint(model) for model in changed}
    assert reference not in prints and len(prints) == len(changed)
    attention = build()
    attention.config._attn_implementation_internal = "sdpa"  # left out of to_dict()
    assert model_fingerprint(attention) != reference


def tiny_models(eps: float = 1e-12) -> dict[str, nn.Module]:
    """Tiny Hugging Face models built offline from their configs, with seeded weights."""
    from transformers import BertConfig, BertModel, GPT2Config, GPT2LMHeadModel, ViTConfig, ViTModel

    sizes = {"num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64}
    bert = BertConfig(vocab_size=100, hidden_size=32, layer_norm_eps=eps, **sizes)
    gpt2 = GPT2Config(vocab_size=100, n_embd=32, n_layer=2, n_head=2, layer_norm_epsilon=eps)
    vit = ViTConfig(hidden_size=32, image_size=16, patch_size=8, layer_norm_eps=eps, **sizes)
    torch.manual_seed(0)
    bert_model = BertModel(bert)
    return {
        "BertModel": bert_model,
        "BertLayer": bert_model.encoder.layer[0],
        "GPT2LMHeadModel": GPT2LMHeadModel(gpt2),
        "ViTModel": ViTModel(vit),
    }


HF_MODELS = ["BertModel", "BertLayer", "GPT2LMHeadModel", "ViTModel"]


@pytest.mark.parametrize("name", HF_MODELS)
def test_hugging_face_models_are_fingerprinted_by_weights_and_config(name: str) -> None:
    model = tiny_models()[name]
    reference = model_fingerprint(model)
    assert model_fingerprint(tiny_models()[name]) == reference  # an identical build
    assert model_fingerprint(tiny_models(eps=1e-5)[name]) != reference
    changed = copy.deepcopy(model)
    with torch.no_grad():
        weight = next(changed.parameters())
        weight.view(-1)[0] += 1e-3
    assert model_fingerprint(changed) != reference


@pytest.fixture
def transformers_followed(monkeypatch):
    """transformers read as the user's own code (an editable install, or one outside
    site-packages): its classes' code and every global that code reads are followed."""
    from pytest_compress.checks import fingerprint

    installed = fingerprint.library_version
    monkeypatch.setattr(
        fingerprint,
        "library_version",
        lambda module: None if (module or "").startswith("transformers") else installed(module),
    )


def test_hugging_face_code_followed_as_the_users_is_fingerprinted(transformers_followed) -> None:
    # decorators, enums, abstract classes, regexes, namedtuples, typing annotations, ...
    models = tiny_models()
    layer, bert = model_fingerprint(models["BertLayer"]), model_fingerprint(models["BertModel"])
    assert model_fingerprint(tiny_models()["BertModel"]) == bert
    assert model_fingerprint(tiny_models(eps=1e-5)["BertLayer"]) != layer


def test_an_unreadable_attribute_is_named_by_its_path() -> None:
    model = tiny_models()["BertModel"]
    model.encoder.layer[1].attention.foo = (i for i in range(3))
    with pytest.raises(Unfingerprintable) as raised:
        model_fingerprint(model)
    assert str(raised.value) == "a builtins.generator (attribute encoder.layer.1.attention.foo)"
