"""Docstrings point at code that exists: every Sphinx cross-reference to polypseg resolves.

A reference such as ``:func:`polypseg.deploy.backends.choose_backend``` or, inside a module,
``:func:`plan_auto_backend``` names a module, class, function or constant. When code moves, a stale
reference would send a reader to a path that no longer exists (as ``polypseg.export`` did after the layout
of issue 14); this test finds them.
"""

from __future__ import annotations

import ast
import builtins
import importlib
import re
from pathlib import Path

import pytest

from helpers import REPO_ROOT

SRC = REPO_ROOT / "src" / "polypseg"
REFERENCE = re.compile(r":(?:func|class|mod|data|meth|attr|exc|obj):`~?([A-Za-z_][\w.]*)`")
#: Top-level packages other than ours that docstrings refer to; their references are not checked here.
FOREIGN = ("gradio", "torch", "lightning", "numpy", "PIL", "kornia", "torchmetrics", "safetensors", "huggingface_hub")


def _module_name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _docstrings(path: Path) -> list[tuple[int, str, str | None]]:
    """(line, docstring, enclosing class name) of the module, its classes and functions, and ``#:`` comments."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found: list[tuple[int, str, str | None]] = []

    def visit(node: ast.AST, owner: str | None) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
                text = ast.get_docstring(child, clean=False)
                inner = child.name if isinstance(child, ast.ClassDef) else owner
                if text:
                    found.append((child.lineno, text, inner))
                visit(child, inner)

    module_doc = ast.get_docstring(tree, clean=False)
    if module_doc:
        found.append((1, module_doc, None))
    visit(tree, None)
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if line.lstrip().startswith("#:"):
            found.append((number, line, None))
    return found


def _resolves(reference: str, module_name: str, owner: str | None) -> bool:
    """Whether a dotted reference names an object, read as absolute, from the module, or from its class."""
    if reference.split(".")[0] in FOREIGN or hasattr(builtins, reference):
        return True
    candidates = [reference] if reference.startswith("polypseg") else []
    if owner is not None:
        candidates.append(f"{module_name}.{owner}.{reference}")
    candidates.append(f"{module_name}.{reference}")
    if not reference.startswith("polypseg"):
        candidates.append(f"polypseg.{reference}")
    return any(_lookup(candidate) for candidate in candidates)


def _lookup(dotted: str) -> bool:
    parts = dotted.split(".")
    for split in range(len(parts), 0, -1):
        try:
            target: object = importlib.import_module(".".join(parts[:split]))
        except ImportError:
            continue
        for name in parts[split:]:
            if not hasattr(target, name):
                # A dataclass field or an attribute set in __init__ is documented but not a class attribute.
                annotations = getattr(target, "__annotations__", {})
                if name not in annotations and name not in getattr(target, "__dataclass_fields__", {}):
                    return False
                return True
            target = getattr(target, name)
        return True
    return False


def _all_references() -> list[tuple[str, int, str, str | None, str]]:
    found = []
    for path in sorted(SRC.rglob("*.py")):
        module_name = _module_name(path)
        for line, text, owner in _docstrings(path):
            for match in REFERENCE.finditer(text):
                found.append((str(path.relative_to(SRC.parent)), line, module_name, owner, match.group(1)))
    return found


def test_docstrings_hold_references():
    assert len(_all_references()) > 50  # the scan reads the docstrings (a broken regex would find none)


def test_every_docstring_reference_resolves():
    try:
        importlib.import_module("gradio")
    except ImportError:
        pytest.skip("gradio (the demo extra) is not installed; apps.webdemo cannot be imported")
    stale = [
        f"{path}:{line}: {reference}"
        for path, line, module_name, owner, reference in _all_references()
        if not _resolves(reference, module_name, owner)
    ]
    assert not stale, "docstring references to code that does not exist:\n" + "\n".join(stale)


def test_a_stale_reference_is_found():
    assert not _resolves("polypseg.export.load_backend", "polypseg.deploy.backends", None)
    assert not _resolves("choose_backend_old", "polypseg.deploy.backends", None)
    assert _resolves("choose_backend", "polypseg.deploy.backends", None)
    assert _resolves("polypseg.deploy.runtime.load_backend", "polypseg.tta", None)
