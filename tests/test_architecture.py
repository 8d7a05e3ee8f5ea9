"""The package's shape, held by tests: layers import only downwards, pytest only in the plugin,
one public table, short functions, and a cache fingerprint that sees every source file."""

from __future__ import annotations

import ast
import importlib
import re
import shutil
from pathlib import Path

import pytest

import pytest_compress
from pytest_compress.checks import fingerprint

PACKAGE = Path(pytest_compress.__file__).parent
README = PACKAGE.parent / "README.md"
# Each layer may import its own modules and those of the layers before it.
LAYERS = ("shared", "engine", "fileformat", "runtimes", "tuning", "checks", "plugin")
STDLIB_ONLY = "shared"
THIRD_PARTY = {"torch", "torchvision", "numpy", "pytest", "hypothesis", "_pytest"}
# Where a user's shorthand ("int8", 0.8) becomes a spec: the marker and the exported functions.
SHORTHAND_BOUNDARY = {
    "plugin/markers.py",
    "engine/specs.py",
    "engine/apply.py",
    "tuning/sensitivity.py",
    "tuning/recovery.py",
}


def modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def layer_of(path: Path) -> str:
    relative = path.relative_to(PACKAGE)
    return relative.parts[0] if len(relative.parts) > 1 else "shared"


def imports(path: Path) -> list[tuple[str, int]]:
    """(absolute module name, line) of every import in ``path``, relative ones resolved."""
    package = ["pytest_compress", *path.relative_to(PACKAGE).parent.parts]
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            name = ".".join([*base, *([node.module] if node.module else [])])
            if node.module is None:  # from . import x: each x may be a module
                found += [(f"{name}.{alias.name}", node.lineno) for alias in node.names]
            else:
                found.append((name, node.lineno))
    return found


def target_layer(name: str) -> str | None:
    parts = name.split(".")
    if parts[0] != "pytest_compress":
        return None
    if len(parts) > 1 and parts[1] in LAYERS:
        return parts[1]
    return "shared"


@pytest.mark.parametrize("path", modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_each_module_imports_only_its_layer_and_the_layers_below(path: Path) -> None:
    layer = layer_of(path)
    if path.name == "__init__.py" and layer == "shared" or path.name == "strategies.py":
        pytest.skip("the public facade and the Hypothesis extras sit above every layer")
    upward = [
        f"line {line}: {name}"
        for name, line in imports(path)
        if (target := target_layer(name)) is not None and LAYERS.index(target) > LAYERS.index(layer)
    ]
    assert not upward, f"{path.name} ({layer}) imports a layer above it: {upward}"


@pytest.mark.parametrize("path", modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_only_the_plugin_imports_pytest_and_the_shared_words_import_only_the_stdlib(
    path: Path,
) -> None:
    layer = layer_of(path)
    roots = {name.split(".")[0] for name, _ in imports(path)}
    if layer != "plugin":
        assert not roots & {"pytest", "_pytest"}, f"{path} imports pytest"
    if layer == STDLIB_ONLY and path.name not in ("strategies.py", "__init__.py"):
        assert not roots & THIRD_PARTY, f"{path} must need neither torch nor pytest"


def test_no_module_parses_shorthands_below_the_boundary() -> None:
    for path in modules():
        relative = path.relative_to(PACKAGE).as_posix()
        calls = re.findall(r"\bas_(?:quant|prune)_spec\(", path.read_text())
        if relative not in SHORTHAND_BOUNDARY:
            assert not calls, f"{relative} parses a shorthand: take a spec instead"


def test_no_function_is_longer_than_sixty_lines() -> None:
    long = []
    for path in modules():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1  # type: ignore[operator]
                if lines > 60 and node.name != "pytest_addoption":
                    long.append(f"{path.relative_to(PACKAGE)}:{node.lineno} {node.name} {lines}")
    assert not long


def test_the_public_table_is_the_typing_block_the_lazy_exports_and_the_readme() -> None:
    tree = ast.parse((PACKAGE / "__init__.py").read_text())
    typed = {
        alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.If) and ast.unparse(node.test) == "TYPE_CHECKING"
        for child in node.body
        if isinstance(child, ast.ImportFrom)
        for alias in child.names
    }
    assert typed == set(pytest_compress.EXPORTS)
    assert pytest_compress.__all__ == ["__version__", *pytest_compress.EXPORTS]
    readme = README.read_text()
    for name, module in pytest_compress.EXPORTS.items():
        value = getattr(pytest_compress, name)
        if isinstance(value, (tuple, str, int)):  # a constant: it lives where the table says
            assert getattr(importlib.import_module(f"pytest_compress.{module}"), name) is value
        else:
            assert value.__module__ == f"pytest_compress.{module}", name
        assert f"`{name}" in readme, f"README.md does not document {name}"


def test_an_edit_in_a_subpackage_changes_the_environment_fingerprint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    copy = tmp_path / "pytest_compress"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(fingerprint, "__file__", str(copy / "checks" / "fingerprint.py"))
    compute = fingerprint.environment_fingerprint.__wrapped__
    before = compute()
    assert compute() == before
    with (copy / "tuning" / "grids.py").open("a") as source:
        source.write("\n# an edit\n")
    assert compute() != before


def test_the_codemap_names_every_module() -> None:
    codemap = (PACKAGE.parent / "ARCHITECTURE.md").read_text()
    for path in modules():
        if path.name != "__init__.py":
            assert f"`{path.name}`" in codemap, f"ARCHITECTURE.md does not list {path.name}"
    for layer in LAYERS[1:]:
        assert f"`{layer}/`" in codemap
