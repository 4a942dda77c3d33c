"""The layout's rules, read from the source: no import circles, no hidden imports of our own modules.

polypseg's modules import each other in one direction only (see docs/architecture.md). Imports of
polypseg modules sit at the top of a module, never inside a function; the only imports inside functions
are the optional heavy extras, each in one place.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

from helpers import REPO_ROOT
from polypseg.extras import EXTRAS

SRC = REPO_ROOT / "src" / "polypseg"
#: Optional extras: imported in one place, ``polypseg.extras.require``, on first use (type hints aside).
LAZY_EXTRAS = {"av", "gradio", "nncf", "onnx", "onnxruntime", "openvino"}
#: Packages in floors: a module may import from its own floor's modules (without cycles) and lower floors.
FLOORS = [
    {"version", "errors", "extras", "model", "losses", "classes", "tta", "hardware", "metrics"},
    {"images", "files"},
    {"config", "data"},
    {"weights"},
    {"deploy"},
    {"inference"},
    {"training", "evaluation"},
    {"publish"},
    {"apps", "cli"},
]


def _module_name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(path): path for path in sorted(SRC.rglob("*.py"))}


def _imports(path: Path) -> tuple[set[str], list[tuple[str, int, bool, bool]]]:
    """polypseg modules imported at module level, and every import as (module, line, in a function, typing only)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    top: set[str] = set()
    found: list[tuple[str, int, bool, bool]] = []

    def visit(node: ast.AST, in_function: bool, in_type_checking: bool) -> None:
        for child in ast.iter_child_nodes(node):
            inner = in_function or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef)
            checking = in_type_checking or (
                isinstance(child, ast.If) and isinstance(child.test, ast.Name) and child.test.id == "TYPE_CHECKING"
            )
            names: list[str] = []
            if isinstance(child, ast.Import):
                names = [alias.name for alias in child.names]
            elif isinstance(child, ast.ImportFrom) and child.module and child.level == 0:
                names = [child.module]
                if child.module == "polypseg":
                    names = [f"polypseg.{alias.name}" for alias in child.names]
            for name in names:
                found.append((name, child.lineno, inner, checking))
                if name.startswith("polypseg") and not inner and not checking:
                    top.add(name)
            visit(child, inner, checking)

    visit(tree, False, False)
    return top, found


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        top, _ = _imports(path)
        targets = set()
        for imported in top:
            # "from polypseg.weights import x" depends on the package polypseg.weights (its __init__).
            while imported not in modules and "." in imported:
                imported = imported.rsplit(".", 1)[0]
            if imported in modules and imported != name:
                targets.add(imported)
        graph[name] = targets
    return graph


def _floor(module: str) -> int:
    parts = module.split(".")
    if len(parts) == 1:
        return len(FLOORS)  # the package itself re-exports the public API from the top
    for index, floor in enumerate(FLOORS):
        if parts[1] in floor:
            return index
    raise AssertionError(f"{module}: in no floor of the layout; add it to FLOORS and docs/architecture.md")


def test_there_are_no_import_circles():
    graph = _graph()
    state: dict[str, int] = {}  # 1: on the stack, 2: done

    def visit(module: str, stack: list[str]) -> None:
        state[module] = 1
        for target in sorted(graph[module]):
            if state.get(target) == 1:
                cycle = [*stack[stack.index(target) :], target] if target in stack else [module, target]
                raise AssertionError("import circle: " + " -> ".join(cycle))
            if target not in state:
                visit(target, [*stack, target])
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])


def test_imports_point_down_the_floors():
    for module, targets in _graph().items():
        for target in targets:
            if target == "polypseg" or module.startswith(target + "."):
                continue  # a package's own __init__ (it re-exports its modules)
            assert _floor(target) <= _floor(module), f"{module} imports {target}, which stands above it"


def test_no_polypseg_imports_inside_functions_and_extras_in_one_place():
    for path in _modules().values():
        for name, line, in_function, typing_only in _imports(path)[1]:
            where = f"{path.relative_to(SRC.parent)}:{line}"
            assert not (in_function and name.startswith("polypseg")), f"{where}: imports {name} inside a function"
            if name.split(".")[0] in LAZY_EXTRAS:
                assert typing_only, f"{where}: imports the extra {name}; use polypseg.extras.require"


def test_modules_are_imported_by_name_only_in_extras():
    for module, path in _modules().items():
        if module != "polypseg.extras":
            text = path.read_text(encoding="utf-8")
            assert "import_module(" not in text and "__import__(" not in text, f"{path}: imports by name"


def test_the_extras_are_those_of_pyproject():
    assert set(EXTRAS) == LAZY_EXTRAS
    pyproject = (REPO_ROOT / "pyproject.toml").read_text(encoding="utf-8")  # no tomllib on Python 3.10
    for module, extra in EXTRAS.items():
        line = re.search(rf"^{extra} = \[(.*)\]$", pyproject, re.MULTILINE)
        assert line and f'"{module}>=' in line.group(1), f"{module} is not in the {extra!r} extra of pyproject.toml"


def test_no_module_is_named_like_the_standard_library():
    names = {path.stem for path in SRC.rglob("*.py")} | {path.name for path in SRC.rglob("*") if path.is_dir()}
    assert not names & set(sys.stdlib_module_names), names & set(sys.stdlib_module_names)


def test_every_module_imports_first_in_a_fresh_polypseg():
    """Each module imported first, with no polypseg module loaded: a circle that ast misses fails here.

    One process (the heavy libraries stay loaded); polypseg's modules are dropped before each import.
    """
    code = (
        "import importlib, sys\n"
        "for name in sys.argv[1:]:\n"
        "    for loaded in [m for m in sys.modules if m == 'polypseg' or m.startswith('polypseg.')]:\n"
        "        del sys.modules[loaded]\n"
        "    try:\n"
        "        importlib.import_module(name)\n"
        "    except Exception as error:\n"
        "        sys.exit(f'{name}: {type(error).__name__}: {error}')\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, *sorted(_modules())], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr.strip().splitlines()[-1:]
