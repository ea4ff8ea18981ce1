"""Every path and every ``twinnet.*`` name that the README, the docs pages or a docstring
mentions exists, so a move or a rename cannot leave the documentation pointing at nothing."""

from __future__ import annotations

import ast
import importlib.util
import re
from functools import cache
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
SRC = ROOT / "src"
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
PATH = re.compile(r"(?<![\w/.~$-])((?:src|tests|bench|docker|docs)/[\w./-]*\w)")
NAME = re.compile(r"(?<![\w./-])(twinnet(?:\.\w+)+)")
#: Words after ``twinnet.`` that are file names, not modules.
FILES = {"json", "yaml", "toml", "egg"}
#: Paths the pages name that the tests or the build create.
GENERATED = {"tests/e2e/artifacts", "docs/_build"}


def _docstrings(tree: ast.AST) -> list[str]:
    nodes = [
        n
        for n in ast.walk(tree)
        if isinstance(n, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
    ]
    return [d for n in nodes if (d := ast.get_docstring(n, clean=False))]


def _texts() -> list[tuple[str, str]]:
    out = [(str(p.relative_to(ROOT)), p.read_text()) for p in PAGES]
    for path in sorted((SRC / "twinnet").rglob("*.py")):
        for doc in _docstrings(ast.parse(path.read_text())):
            out.append((str(path.relative_to(ROOT)), doc))
    return out


@cache
def _names(module: str) -> dict[str, set[str]]:
    """Top-level names of ``module`` and the names inside each of its classes, from its source."""
    spec = importlib.util.find_spec(module)
    tree = ast.parse(Path(spec.origin).read_text())
    names: dict[str, set[str]] = {"": set()}
    for node in tree.body:
        targets: list[str] = []
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            targets = [node.name]
        elif isinstance(node, ast.Assign | ast.AnnAssign):
            for t in node.targets if isinstance(node, ast.Assign) else [node.target]:
                targets += [n.id for n in ast.walk(t) if isinstance(n, ast.Name)]
            if targets == ["__all__"]:  # names a module hands out on first use (__getattr__)
                targets += [c.value for c in ast.walk(node.value) if isinstance(c, ast.Constant)]
        elif isinstance(node, ast.ImportFrom | ast.Import):
            targets = [a.asname or a.name.split(".")[0] for a in node.names]
        names[""].update(targets)
        if isinstance(node, ast.ClassDef):
            names[node.name] = {
                n.name if hasattr(n, "name") else getattr(getattr(n, "target", None), "id", "")
                for n in node.body
            }
            names[node.name] |= {
                t.id
                for n in node.body
                if isinstance(n, ast.Assign)
                for t in n.targets
                if isinstance(t, ast.Name)
            }
    return names


def _exists(dotted: str) -> bool:
    parts = dotted.split(".")
    if parts[1] in FILES:
        return True
    for cut in range(len(parts), 0, -1):
        module = ".".join(parts[:cut])
        try:
            found = importlib.util.find_spec(module) is not None
        except ModuleNotFoundError:
            found = False
        if found:
            rest = parts[cut:]
            if not rest:
                return True
            names = _names(module)
            if rest[0] not in names[""]:
                return False
            return len(rest) == 1 or rest[0] not in names or rest[1] in names[rest[0]]
    return False


def test_every_named_path_exists():
    missing = sorted(
        {
            f"{where}: {m}"
            for where, text in _texts()
            for m in PATH.findall(text)
            if not (ROOT / m).exists() and m not in GENERATED
        }
    )
    assert not missing, "\n".join(missing)


def test_every_named_twinnet_module_and_object_exists():
    missing = sorted(
        {
            f"{where}: {m}"
            for where, text in _texts()
            for m in NAME.findall(text)
            if not _exists(m.rstrip("."))
        }
    )
    assert not missing, "\n".join(missing)
