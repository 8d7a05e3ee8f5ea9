"""Fingerprints: short digests of everything a compression result depends on.

A fingerprint changes when something that can change a measurement changes: a weight's
or buffer's bytes, a module's settings (a stride, an activation's ``inplace``), the code
of the model's classes, a data value, the metric's code and the values it closes over,
or the versions of Python, torch and pytest-compress. Two sessions that compute the same
fingerprint may share measurements.

Code is fingerprinted by its compiled bytecode and constants (so editing a comment or
moving a function does not count as a change), following the functions of the same
module that it names and the plain constants (numbers, strings) it reads from module
globals. Code in *other* modules is not followed: after changing such code, run with
``--compress-no-cache`` once, or clear pytest's cache (``pytest --cache-clear``).

A value whose behaviour cannot be seen from its contents (a C object without state we
can read, a file handle) raises ``Unfingerprintable``: a check that depends on one is
never served from the cache, which is slower but never wrong.
"""

from __future__ import annotations

import functools
import hashlib
import sys
import types
import weakref
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .. import __version__
from ..engine.measure import ModelMetric

DIGEST_BYTES = 16
_MAX_DEPTH = 12
_PRIMITIVES = (type(None), bool, int, float, complex, str, bytes)
# Every nn.Module has these; they are hashed on purpose (parameters, buffers, children,
# forward hooks) or cannot change an output (backward and state_dict hooks, the flag
# that evaluation overrides anyway).
_MODULE_BASICS = frozenset(vars(nn.Module()))
# A user's forward hooks change outputs, and torch has no public way to list them: these
# dicts (and the flags that change how a hook is called) are read, never written. The
# engine's own activation hooks are also recorded in the module's __dict__.
_HOOK_DICTS = (
    ("_forward_pre_hooks", "_forward_pre_hooks_with_kwargs", None),
    ("_forward_hooks", "_forward_hooks_with_kwargs", "_forward_hooks_always_called"),
)
_class_digests: weakref.WeakKeyDictionary[type, str] = weakref.WeakKeyDictionary()


class Unfingerprintable(ValueError):
    """A value whose contents do not determine its behaviour; the message says which."""


class Hasher:
    """Feeds values into one blake2b digest.

    Every item is written as a kind tag and a length before its bytes, so two different
    sequences of values can never produce the same byte stream.
    """

    def __init__(self) -> None:
        self._hash = hashlib.blake2b(digest_size=DIGEST_BYTES)
        self._seen: set[int] = set()  # functions and objects already followed (cycles)

    def hexdigest(self) -> str:
        return self._hash.hexdigest()

    def _item(self, tag: bytes, payload: bytes | memoryview | np.ndarray) -> None:
        size = payload.nbytes if isinstance(payload, (memoryview, np.ndarray)) else len(payload)
        self._hash.update(tag + size.to_bytes(8, "little"))
        # numpy types ndarray as a buffer (__buffer__) only for Python >= 3.12
        self._hash.update(payload)  # type: ignore[arg-type]

    def text(self, text: str) -> None:
        self._item(b"s", text.encode("utf-8", "surrogatepass"))

    def tensor(self, tensor: torch.Tensor) -> None:
        """dtype, shape and the bytes of every element, in C order."""
        if tensor.layout != torch.strided or tensor.is_quantized:
            raise Unfingerprintable(f"a {tensor.layout} tensor of dtype {tensor.dtype}")
        if tensor.device.type == "meta":
            raise Unfingerprintable("a tensor on the meta device has no values")
        flat = tensor.detach().resolve_conj().resolve_neg().reshape(-1)
        if flat.device.type != "cpu":
            flat = flat.cpu()
        flat = flat.contiguous()
        self.text(f"tensor {flat.dtype} {tuple(tensor.shape)}")
        if flat.numel():
            self._item(b"t", flat.view(torch.uint8).numpy())

    def value(self, value: Any, depth: int = 0) -> None:
        """Any value whose behaviour its contents determine; ``Unfingerprintable`` otherwise."""
        if depth > _MAX_DEPTH:
            raise Unfingerprintable("a value nested more than 12 levels deep")
        if isinstance(value, _PRIMITIVES):
            self.text(f"{type(value).__name__}:{value!r}")
        elif isinstance(value, torch.Tensor):
            self.tensor(value)
        elif isinstance(value, np.ndarray):
            self.tensor(torch.from_numpy(np.ascontiguousarray(value)))
        elif isinstance(value, (torch.dtype, torch.device, torch.Size, slice, range)):
            self.text(repr(value))
        elif isinstance(value, (tuple, list, set, frozenset)):
            items = sorted(value, key=repr) if isinstance(value, (set, frozenset)) else value
            self.text(f"{type(value).__name__}[{len(value)}]")
            for item in items:
                self.value(item, depth + 1)
        elif isinstance(value, Mapping):
            self.text(f"{type(value).__name__}{{{len(value)}}}")
            for key, item in value.items():
                self.value(key, depth + 1)
                self.value(item, depth + 1)
        else:
            self._callable_or_object(value, depth)

    def _callable_or_object(self, value: Any, depth: int) -> None:
        if isinstance(value, types.FunctionType):
            self.function(value, depth)
        elif isinstance(value, types.MethodType):
            # usually a function, but a method can wrap any callable (a builtin, a partial)
            self._callable_or_object(value.__func__, depth)
            self.value(value.__self__, depth + 1)
        elif isinstance(value, functools.partial):
            self.text("partial")
            self.value((value.func, value.args, value.keywords), depth + 1)
        elif isinstance(value, (types.BuiltinFunctionType, types.ModuleType, type)):
            # C functions and imported modules belong to versioned packages; a class is
            # its name here, its code is hashed where its instances are.
            name = getattr(value, "__qualname__", getattr(value, "__name__", repr(value)))
            self.text(f"{type(value).__name__} {getattr(value, '__module__', '')}.{name}")
        elif isinstance(value, nn.Module):
            self.module(value)
        elif isinstance(value, (staticmethod, classmethod)):
            self.value(value.__func__, depth + 1)
        elif isinstance(value, property):
            self.value((value.fget, value.fset), depth + 1)
        elif hasattr(value, "__dict__") and not isinstance(value, type):
            self._object(value, depth)
        else:
            raise Unfingerprintable(f"a {type(value).__module__}.{type(value).__qualname__}")

    def _object(self, value: Any, depth: int) -> None:
        """A plain object: its class's code and its attributes."""
        self.text(f"object {class_digest(type(value))}")
        if id(value) in self._seen:
            return  # a reference back to an object being hashed
        self._seen.add(id(value))
        self.value(dict(sorted(vars(value).items())), depth + 1)

    def function(self, function: types.FunctionType, depth: int = 0) -> None:
        """A Python function: its code, defaults, closure, and the globals it reads."""
        self.text(f"function {function.__module__}.{function.__qualname__}")
        if id(function) in self._seen:
            return
        self._seen.add(id(function))
        self.code(function.__code__)
        self.value(function.__defaults__, depth + 1)
        self.value(function.__kwdefaults__, depth + 1)
        for cell in function.__closure__ or ():
            try:
                contents = cell.cell_contents
            except ValueError:  # a cell not yet filled
                contents = None
            self.value(contents, depth + 1)
        for name in sorted(_global_names(function.__code__)):
            if name not in function.__globals__:
                continue
            found = function.__globals__[name]
            if _is_constant(found):
                self.text(f"global {name}")
                self.value(found, depth + 1)
            elif isinstance(found, types.FunctionType) and found.__module__ == function.__module__:
                self.text(f"global {name}")
                self.function(found, depth + 1)
            # Anything else (modules, classes, imported functions, mutable state such as
            # a call counter) is left out: see the module docstring.

    def code(self, code: types.CodeType) -> None:
        """Bytecode, constants and names; not line numbers, so moving code is no change."""
        self.text(f"code {code.co_name} {code.co_argcount} {code.co_kwonlyargcount}")
        self._item(b"c", code.co_code)
        self.text(" ".join(code.co_names))
        for constant in code.co_consts:
            if isinstance(constant, types.CodeType):
                self.code(constant)
            else:
                self.text(_constant_text(constant))

    def module(self, model: nn.Module) -> None:
        """Every submodule: its class's code, its settings, parameters, buffers and hooks."""
        if id(model) in self._seen:
            self.text("module seen")
            return
        self._seen.add(id(model))
        for name, module in model.named_modules(remove_duplicate=False):
            self.text(f"module {name} {class_digest(type(module))}")
            for key, tensor in (*module._parameters.items(), *module._buffers.items()):
                self.text(key)
                if tensor is None:
                    self.text("None")
                else:
                    self.tensor(tensor)
            for hooks, with_kwargs, always in _HOOK_DICTS:
                # the dict keys are handle ids, which differ between sessions: hash the
                # hooks in order, each with how it is called
                flags = [getattr(module, name, {}) for name in (with_kwargs, always) if name]
                for hook_id, hook in getattr(module, hooks).items():
                    self.value(hook)
                    self.value([hook_id in flag for flag in flags])
            settings = {k: v for k, v in vars(module).items() if k not in _MODULE_BASICS}
            self.value(dict(sorted(settings.items())))


def class_digest(cls: type) -> str:
    """The class's name and the code of every function it and its bases define.

    torch's own classes are named only: their code is covered by the torch version.
    """
    found = _class_digests.get(cls)
    if found is not None:
        return found
    hasher = Hasher()
    hasher.text(f"class {cls.__module__}.{cls.__qualname__}")
    for base in cls.__mro__:
        if base is object or base.__module__.split(".")[0] == "torch":
            continue
        hasher.text(f"base {base.__module__}.{base.__qualname__}")
        for name, member in sorted(vars(base).items()):
            if isinstance(member, (types.FunctionType, staticmethod, classmethod, property)):
                hasher.text(name)
                hasher.value(member)
    found = hasher.hexdigest()
    _class_digests[cls] = found
    return found


def model_fingerprint(model: nn.Module) -> str:
    """The digest of a model's structure, code, weights and buffers.

    Raises ``Unfingerprintable`` naming what cannot be hashed.
    """
    hasher = Hasher()
    hasher.module(model)
    return hasher.hexdigest()


def metric_fingerprint(metric: Any) -> str:
    """The digest of a metric: None (top-1 accuracy), a batch or a whole-model metric."""
    hasher = Hasher()
    if metric is None:
        hasher.text("top-1 accuracy")
    elif isinstance(metric, ModelMetric):
        hasher.text("model metric")
        hasher.value(metric.fn)
    else:
        hasher.text("batch metric")
        hasher.value(metric)
    return hasher.hexdigest()


class DataDigest:
    """The digest of a stream of batches, fed one batch at a time.

    ``unfingerprintable`` holds the reason when a batch could not be hashed, and then
    ``hexdigest()`` is None.
    """

    def __init__(self) -> None:
        self._hasher = Hasher()
        self._batches = 0
        self._digest: str | None = None
        self.unfingerprintable: str | None = None

    def update(self, batch: Any) -> None:
        if self._digest is not None:
            raise RuntimeError("DataDigest.update after hexdigest")
        if self.unfingerprintable is not None:
            return
        try:
            self._hasher.value(batch)
        except Unfingerprintable as error:
            self.unfingerprintable = f"batch {self._batches} holds {error}"
        self._batches += 1

    def hexdigest(self) -> str | None:
        if self.unfingerprintable is not None:
            return None
        if self._digest is None:
            self._hasher.text(f"batches {self._batches}")
            self._digest = self._hasher.hexdigest()
        return self._digest


@functools.cache
def environment_fingerprint() -> str:
    """Python, torch, and pytest-compress: its version and its own source files.

    The source is hashed too, so an editable install whose code changed (version
    unchanged) does not reuse numbers measured by the old code.
    """
    hasher = Hasher()
    hasher.text(f"python {sys.version_info[:3]} torch {torch.__version__} plugin {__version__}")
    package = Path(__file__).parent.parent
    for path in sorted(package.rglob("*.py")):
        hasher.text(path.relative_to(package).as_posix())
        hasher._item(b"f", path.read_bytes())
    return hasher.hexdigest()


def _global_names(code: types.CodeType) -> set[str]:
    """Names a code object (and the code nested in it) may read from module globals."""
    names = set(code.co_names)
    for constant in code.co_consts:
        if isinstance(constant, types.CodeType):
            names |= _global_names(constant)
    return names


def _is_constant(value: Any) -> bool:
    if isinstance(value, _PRIMITIVES):
        return True
    return isinstance(value, (tuple, frozenset)) and all(_is_constant(v) for v in value)


def _constant_text(constant: Any) -> str:
    # A frozenset's repr follows string hashing, which differs between processes.
    if isinstance(constant, frozenset):
        return "frozenset(" + ",".join(sorted(_constant_text(c) for c in constant)) + ")"
    if isinstance(constant, tuple):
        return "(" + ",".join(_constant_text(c) for c in constant) + ")"
    return f"{type(constant).__name__}:{constant!r}"
