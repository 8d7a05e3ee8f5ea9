"""Fingerprints: short digests of everything a compression result depends on.

A fingerprint changes when something that can change a measurement changes: a weight's
or buffer's bytes, a module's settings (a stride, an activation's ``inplace``), the code
of the model's classes, a data value, the metric's code and the values it closes over,
or the versions of Python, torch and pytest-compress. Two sessions that compute the same
fingerprint may share measurements.

Code is fingerprinted by its compiled bytecode and constants (so editing a comment or
moving a function does not count as a change). What the code reads is fingerprinted too:

- **Your code** (any module outside the standard library and site-packages: your project,
  its conftest, an editable install) is followed. For a model, every submodule's class:
  the code of its methods (``class_digest``), its class-level attributes, and by value
  every module global those methods read; for a metric, the function (or callable
  object) the same way. A global's value is hashed whatever it is: numbers and strings,
  tensors and numpy arrays (every byte), lists, dicts, sets and tuples, plain objects
  (their class and their attributes), models; a function global is hashed as code plus
  its own globals, recursively. Cycles are written as back-references, and nesting is
  bounded (more than 60 levels deep counts as unfingerprintable: an editable
  package's globals read globals in turn).
- **Installed code** (the standard library, site-packages, pytest-compress itself) is
  named, with its package's version, never hashed by content: an imported module
  (``torch``, ``F``), a function or class from one (``F.relu``, ``nn.Linear``), torch's
  own base classes. A module-level ``logging.Logger`` is named too: it only writes.

So a model whose ``forward`` reads a module-level tensor, or a metric reading a
module-level dict, gets a new fingerprint when that value changes. A global that changes
on every run (a call counter read by ``forward``) makes the check miss the cache every
run: slower, never wrong. Changing *installed* code without changing its version is not
seen: run with ``--compress-no-cache`` once, or clear pytest's cache
(``pytest --cache-clear``).

Plain data is read by value wherever it is met (a module's settings, a global): numbers,
strings, enums, dataclasses, objects with ``__dict__`` or ``__slots__``, typing
annotations, regexes, and a Hugging Face configuration (recognised by its base class's
name, or ``to_dict()`` plus a class-level ``model_type``: transformers is never
imported) by ``to_dict()`` and its private plain settings (the attention
implementation). Ignored, as their state cannot change an output or their code is
hashed already: a lock's state, a hook's removal handle (the hook is hashed with its
module), a ``@contextmanager`` object's generator (its function and arguments are
hashed), a bare ``object()`` sentinel, and C methods of builtin types.

A value whose behaviour cannot be seen from its contents (a generator, a weak
reference, a C object without state we can read, a file handle, an array of Python
objects) raises ``Unfingerprintable``, naming the attribute path
(``encoder.layer.3.attention.foo``) or the global that holds it: a check that depends on
one is never served from the cache (the report says why), which is slower but never wrong.
"""

from __future__ import annotations

import abc
import collections
import contextlib
import dataclasses
import dis
import enum
import functools
import hashlib
import importlib.metadata
import logging
import os
import re
import site
import sys
import sysconfig
import threading
import types
import weakref
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from .. import __version__
from ..engine.measure import ModelMetric

DIGEST_BYTES = 16
# What a fingerprint reads by value: the fix a note suggests for what it cannot read.
PLAIN_DATA = (
    "numbers, strings, enums, tensors, arrays, lists, dicts, dataclasses, objects with "
    "__dict__ or __slots__, a configuration with to_dict()"
)
_MAX_DEPTH = 60
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
# Values that their repr describes whole.
_BY_REPR = (
    torch.dtype,
    torch.device,
    torch.Size,
    slice,
    range,
    re.Pattern,
    types.UnionType,
    types.GenericAlias,
)
_class_digests: weakref.WeakKeyDictionary[type, str] = weakref.WeakKeyDictionary()
# C-level methods and attributes of builtin types (``str.__repr__``, ``list.append``):
# part of Python, named like a builtin function.
_DESCRIPTORS = (
    types.BuiltinFunctionType,
    types.WrapperDescriptorType,
    types.MethodWrapperType,
    types.MethodDescriptorType,
    types.ClassMethodDescriptorType,
    types.GetSetDescriptorType,
    types.MemberDescriptorType,
    type(vars(collections.namedtuple("Pair", "first"))["first"]),  # a namedtuple field
)
# Whose state cannot change an output, so only their kind is hashed: a lock (whether it
# is held), a hook's removal handle (the hook itself is hashed with its module).
# An abstract class's cache of its subclasses (``_abc_impl``) is state of that kind too.
_STATELESS = (
    type(threading.Lock()),
    type(threading.RLock()),
    RemovableHandle,
    type(vars(abc.ABC)["_abc_impl"]),
)
# The base classes of a Hugging Face configuration (``PretrainedConfig`` before
# transformers 5), recognised by name: the package never imports transformers.
_CONFIG_BASES = frozenset({"PretrainedConfig", "PreTrainedConfig", "GenerationConfig"})
# Private configuration values each process makes up anew: GenerationConfig records
# hash(self), which differs from run to run and says nothing about outputs.
_PROCESS_MADE = frozenset({"_original_object_hash"})


class Unfingerprintable(ValueError):
    """A value whose contents do not determine its behaviour; the message says which,
    and where it was found (the globals that lead to it)."""

    def __init__(self, what: str, where: tuple[str, ...] = ()) -> None:
        self.what, self.where = what, where
        super().__init__(f"{what} ({', in '.join(where)})" if where else what)

    def inside(self, where: str) -> Unfingerprintable:
        return Unfingerprintable(self.what, (*self.where, where))


class Hasher:
    """Feeds values into one SHA-256 digest (truncated to ``DIGEST_BYTES``): hashing a
    model's weights is most of a fingerprint, and OpenSSL's SHA-256, on the instructions
    x86 and ARM processors have for it, runs at twice blake2b's speed (2.2 GB/s here).

    Every item is written as a kind tag and a length before its bytes, so two different
    sequences of values can never produce the same byte stream. Containers, objects,
    functions, classes and modules are followed once: a second reference to one (a cycle,
    or the same object reached twice) is written as a back-reference to the first.
    With ``code_only`` (for ``class_digest``, which is memoised per class) the globals a
    function reads are left out: they are values, hashed afresh by every fingerprint.
    """

    def __init__(self, *, code_only: bool = False) -> None:
        self._hash = hashlib.sha256()
        self._code_only = code_only
        # id -> (order of the first visit, the object: kept alive so ids are not reused)
        self._visited: dict[int, tuple[int, Any]] = {}

    def hexdigest(self) -> str:
        return self._hash.hexdigest()[: 2 * DIGEST_BYTES]

    def forget(self) -> None:
        """Let go of the objects visited so far (one data batch's, say)."""
        self._visited.clear()

    def _item(self, tag: bytes, payload: bytes | memoryview | np.ndarray) -> None:
        size = payload.nbytes if isinstance(payload, (memoryview, np.ndarray)) else len(payload)
        self._hash.update(tag + size.to_bytes(8, "little"))
        # numpy types ndarray as a buffer (__buffer__) only for Python >= 3.12
        self._hash.update(payload)  # type: ignore[arg-type]

    def _first_visit(self, value: Any) -> bool:
        """True the first time ``value`` is met; after that, a back-reference is written."""
        found = self._visited.get(id(value))
        if found is not None:
            self.text(f"ref {found[0]}")
            return False
        self._visited[id(value)] = (len(self._visited), value)
        return True

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
            raise Unfingerprintable(f"a value nested more than {_MAX_DEPTH} levels deep")
        if isinstance(value, enum.Enum):
            self.text(f"enum {_qualified(type(value))}.{value.name}")
            self.value(value.value, depth + 1)
        elif isinstance(value, _PRIMITIVES):
            self.text(f"{type(value).__name__}:{value!r}")
        elif isinstance(value, torch.Tensor):
            self.tensor(value)
        elif isinstance(value, np.ndarray):
            if value.dtype.hasobject:
                raise Unfingerprintable("a numpy array of Python objects")
            self.tensor(torch.from_numpy(np.ascontiguousarray(value)))
        elif isinstance(value, np.generic):
            self.text(f"numpy {value.dtype}:{value!r}")
        elif isinstance(value, _BY_REPR) or type(value).__module__ == "typing":
            self.text(repr(value))  # typing's annotations (Optional[int]) too
        elif isinstance(value, (tuple, list, set, frozenset, Mapping)):
            self._container(value, depth)
        else:
            self._callable_or_object(value, depth)

    def _container(self, value: Any, depth: int) -> None:
        self.text(f"{type(value).__name__}[{len(value)}]")
        if not self._first_visit(value):
            return
        if isinstance(value, Mapping):
            for key, item in value.items():
                self.value(key, depth + 1)
                self.value(item, depth + 1)
            return
        items = sorted(value, key=repr) if isinstance(value, (set, frozenset)) else value
        for item in items:
            self.value(item, depth + 1)

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
        elif isinstance(value, (*_DESCRIPTORS, types.ModuleType, logging.Logger)):
            # C functions and imported modules belong to versioned packages; a logger
            # only writes
            self.text(f"{type(value).__name__} {_named(value)}")
        elif isinstance(value, type):
            self.cls(value, depth)
        elif isinstance(value, nn.Module):
            self.module(value)
        elif isinstance(value, (staticmethod, classmethod)):
            self.value(value.__func__, depth + 1)
        elif isinstance(value, property):
            self.value((value.fget, value.fset), depth + 1)
        elif not self._plain_data(value, depth):
            raise Unfingerprintable(f"a {_qualified(type(value))}")

    def _plain_data(self, value: Any, depth: int) -> bool:
        """Hash a configuration-like object or one whose state cannot change an output;
        False for an object whose state cannot be read."""
        if type(value) is object or isinstance(value, _STATELESS):
            self.text(f"stateless {_qualified(type(value))}")  # a sentinel, a lock
        elif _is_config(value):
            self._config(value, depth)
        elif dataclasses.is_dataclass(value):
            self.text("dataclass")
            if self._first_visit(value):
                self.cls(type(value), depth)
                fields = {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
                self.value(fields, depth + 1)
        elif isinstance(value, contextlib.AbstractContextManager) and _is_generator_cm(value):
            # @contextmanager, also as a decorator: its generator is made by func(*args,
            # **kwds), so those are hashed and the generator is not
            self.text("context manager")
            self.value((value.func, value.args, value.kwds), depth + 1)  # type: ignore[attr-defined]
        elif hasattr(value, "__dict__") or _slotted(type(value)):
            self._object(value, depth)
        else:
            return False
        return True

    def _config(self, config: Any, depth: int) -> None:
        """A Hugging Face configuration: its class, ``to_dict()``, and the private settings
        that ``to_dict()`` leaves out (the attention implementation)."""
        self.text("config")
        if not self._first_visit(config):
            return
        self.cls(type(config), depth)
        try:
            settings = config.to_dict()
        except Exception as error:  # a user's to_dict: its failure says what is unreadable
            raise Unfingerprintable(f"a configuration whose to_dict() raised {error!r}") from None
        self.value(settings, depth + 1)
        private = {
            name: item
            for name, item in vars(config).items()
            if name.startswith("_") and isinstance(item, _PRIMITIVES) and name not in _PROCESS_MADE
        }
        self.value(dict(sorted(private.items())), depth + 1)

    def _object(self, value: Any, depth: int) -> None:
        """A plain object: its class (code and class-level values) and its attributes."""
        self.text("object")
        if not self._first_visit(value):
            return
        self.cls(type(value), depth)
        state = dict(vars(value)) if hasattr(value, "__dict__") else {}
        for base in type(value).__mro__[:-1]:
            slots = vars(base).get("__slots__", ())
            for name in (slots,) if isinstance(slots, str) else slots:
                if name not in ("__dict__", "__weakref__"):
                    state[name] = getattr(value, name, "<unset>")
        self.value(dict(sorted(state.items())), depth + 1)

    def cls(self, cls: type, depth: int = 0) -> None:
        """An installed package's class by name and version; the user's by its code and
        the values its methods read (globals, class attributes)."""
        version = library_version(cls.__module__)
        if version is not None or self._code_only:
            # in a class's own digest (a super() cell holds the class) a class is its name
            self.text(f"class {cls.__module__}.{cls.__qualname__} {version}")
            return
        self.text(f"class {class_digest(cls)}")
        if not self._code_only and self._first_visit(cls):
            self._class_values(cls, depth)

    def _class_values(self, cls: type, depth: int) -> None:
        for base in cls.__mro__:
            if base is object or library_version(base.__module__) is not None:
                continue
            for name, member in sorted(vars(base).items()):
                inner = (
                    member.__func__ if isinstance(member, (staticmethod, classmethod)) else member
                )
                functions = (inner.fget, inner.fset) if isinstance(inner, property) else (inner,)
                if any(isinstance(f, types.FunctionType) for f in functions):
                    for function in functions:
                        if isinstance(function, types.FunctionType):
                            self._globals(function, depth)
                elif not (name.startswith("__") and name.endswith("__")):
                    self.text(f"attribute {name}")  # a class-level value, read via self
                    self.value(member, depth + 1)

    def function(self, function: types.FunctionType, depth: int = 0) -> None:
        """A Python function: its code, defaults, closure, and the globals it reads.

        An installed package's function met inside another value is named (with its
        version) rather than followed.
        """
        name = f"{function.__module__}.{function.__qualname__}"
        version = library_version(function.__module__)
        if depth > 0 and version is not None:
            self.text(f"function {name} {version}")
            return
        self.text(f"function {name}")
        if not self._first_visit(function):
            return
        self.code(function.__code__)
        self.value(function.__defaults__, depth + 1)
        self.value(function.__kwdefaults__, depth + 1)
        for cell in function.__closure__ or ():
            try:
                contents = cell.cell_contents
            except ValueError:  # a cell not yet filled
                contents = None
            self.value(contents, depth + 1)
        if version is None:
            self._globals(function, depth)

    def _globals(self, function: types.FunctionType, depth: int) -> None:
        """Every module global ``function``'s code reads, by value (see the module docstring)."""
        if self._code_only:
            return
        for name in sorted(global_names(function.__code__)):
            if name not in function.__globals__:
                continue  # a builtin, or a global not defined yet
            self.text(f"global {name}")
            try:
                self.value(function.__globals__[name], depth + 1)
            except Unfingerprintable as error:
                raise error.inside(f"global {name} read by {function.__qualname__}") from None

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
        """Every submodule: its class's code and the values its methods read, its settings,
        parameters, buffers and hooks. What cannot be read is named by its attribute path
        (``encoder.layer.3.attention.foo``)."""
        self.text("model")
        if not self._first_visit(model):
            return
        for name, module in model.named_modules(remove_duplicate=False):
            self.text(f"module {name}")
            try:
                self.cls(type(module))
            except Unfingerprintable as error:
                where = f"the code of {type(module).__qualname__}, " + (
                    f"module {name}" if name else "the model"
                )
                raise error.inside(where) from None
            for key, tensor in (*module._parameters.items(), *module._buffers.items()):
                self.text(key)
                if tensor is None:
                    self.text("None")
                else:
                    self.tensor(tensor)
            self._hooks(module)
            for key, setting in sorted(vars(module).items()):
                if key in _MODULE_BASICS:
                    continue
                self.text(f"setting {key}")
                try:
                    self.value(setting)
                except Unfingerprintable as error:
                    path = f"{name}.{key}" if name else key
                    raise error.inside(f"attribute {path}") from None

    def _hooks(self, module: nn.Module) -> None:
        for hooks, with_kwargs, always in _HOOK_DICTS:
            # the dict keys are handle ids, which differ between sessions: hash the
            # hooks in order, each with how it is called
            flags = [getattr(module, name, {}) for name in (with_kwargs, always) if name]
            for hook_id, hook in getattr(module, hooks).items():
                self.value(hook)
                self.value([hook_id in flag for flag in flags])


def class_digest(cls: type) -> str:
    """The class's name and the code of every function it and its bases define.

    Classes of installed packages (torch's among them) are named only, with the package's
    version. Memoised per class: code only, the values its methods read are hashed by
    ``Hasher.cls`` on every fingerprint.
    """
    found = _class_digests.get(cls)
    if found is not None:
        return found
    hasher = Hasher(code_only=True)
    hasher.text(f"class {cls.__module__}.{cls.__qualname__}")
    for base in cls.__mro__:
        version = library_version(base.__module__)
        if base is object or version is not None:
            hasher.text(f"library base {base.__module__}.{base.__qualname__} {version}")
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
        finally:
            self._hasher.forget()  # a streamed batch is not kept alive by its digest
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


@functools.lru_cache(maxsize=16384)
def global_names(code: types.CodeType) -> frozenset[str]:
    """Names a code object (and the code nested in it) reads from module globals.

    Memoised: following a large editable package reads the same code many times.
    """
    names = {
        str(instruction.argval)
        for instruction in dis.get_instructions(code)
        if instruction.opname in ("LOAD_GLOBAL", "LOAD_NAME")
    }
    for constant in code.co_consts:
        if isinstance(constant, types.CodeType):
            names |= global_names(constant)
    return frozenset(names)


def library_version(module: str | None) -> str | None:
    """``module``'s package and version when it is installed code (the standard library,
    site-packages, pytest-compress itself); None for the user's own code."""
    found = sys.modules.get(module or "")
    path = getattr(found, "__file__", None)
    return _library_version(module or "", path if isinstance(path, str) else None)


@functools.lru_cache(maxsize=4096)
def _library_version(module: str, path: str | None) -> str | None:
    top = module.split(".")[0]
    if top == __package__.split(".")[0]:
        return f"{top} {__version__}"  # its source is in environment_fingerprint
    if top in sys.builtin_module_names or top in getattr(sys, "stdlib_module_names", ()):
        return "stdlib"
    if path is None:
        return None  # a module made at run time (exec), not installed
    real = os.path.realpath(path)
    if not any(real.startswith(root) for root in _library_roots()):
        return None
    try:
        return f"{top} {importlib.metadata.version(top)}"
    except (importlib.metadata.PackageNotFoundError, ValueError):
        return f"{top} (installed)"


@functools.cache
def _library_roots() -> tuple[str, ...]:
    paths = sysconfig.get_paths()
    roots = {paths[name] for name in ("stdlib", "platstdlib", "purelib", "platlib")}
    roots.update(site.getsitepackages())
    roots.add(site.getusersitepackages())
    return tuple(os.path.join(os.path.realpath(root), "") for root in roots)


def _qualified(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def _named(value: Any) -> str:
    """A builtin's or an imported module's name: ``builtins.str.__repr__``, ``torch``."""
    owner = getattr(value, "__objclass__", None)
    name = getattr(value, "__qualname__", getattr(value, "__name__", repr(value)))
    if isinstance(owner, type) and "." not in name:
        name = f"{owner.__qualname__}.{name}"
    module = getattr(value, "__module__", None) or getattr(owner, "__module__", "")
    return f"{module}.{name}"


def _slotted(cls: type) -> bool:
    """Whether every class of ``cls``'s hierarchy is Python code declaring ``__slots__``:
    then its slots are all its state (a C type's hidden state has no slots)."""
    return all(base is object or "__slots__" in vars(base) for base in cls.__mro__)


def _is_config(value: Any) -> bool:
    """A Hugging Face ``PretrainedConfig`` (or a lookalike: ``to_dict()`` and a class-level
    ``model_type``), recognised without importing transformers."""
    cls = type(value)
    if any(base.__name__ in _CONFIG_BASES for base in cls.__mro__):
        return callable(getattr(value, "to_dict", None))
    return callable(getattr(value, "to_dict", None)) and isinstance(
        getattr(cls, "model_type", None), str
    )


def _is_generator_cm(value: Any) -> bool:
    """A ``contextlib.contextmanager`` object (``_GeneratorContextManager``)."""
    return type(value).__module__ == "contextlib" and all(
        hasattr(value, name) for name in ("gen", "func", "args", "kwds")
    )


def _constant_text(constant: Any) -> str:
    # A frozenset's repr follows string hashing, which differs between processes.
    if isinstance(constant, frozenset):
        return "frozenset(" + ",".join(sorted(_constant_text(c) for c in constant)) + ")"
    if isinstance(constant, tuple):
        return "(" + ",".join(_constant_text(c) for c in constant) + ")"
    return f"{type(constant).__name__}:{constant!r}"
