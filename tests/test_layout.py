"""The package layout, read from the source: no import circle, no forbidden edge.

docs/architecture.md draws the parts of speechbs and what each may import. This
test reads every module's imports with :mod:`ast` (function-level imports
included: a lazy import is still a dependency) and fails on a circle between
modules or on an edge the layout forbids. The checker is run on small synthetic
packages too, so a checker that stopped seeing edges would fail here as well.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "speechbs"

# (importing part, imported part): forbidden. A part is the first name under ``speechbs``
# (``speechbs.models.hubert`` -> ``models``; a top-level module is its own part).
FORBIDDEN: dict[str, set[str]] = {
    # Architecture only: no file I/O, training, data pipeline or configuration loading.
    "models": {"train", "tasks", "data", "targets", "checkpoint", "configio", "pretrained", "sweep",
               "report", "asr", "cli", "pretrain", "finetune", "config", "dist", "interop", "export"},
    # The data pipeline knows audio, manifests and batches, not models or training.
    "data": {"train", "tasks", "models", "sweep", "report", "cli", "pretrain", "finetune", "interop"},
    # The engine runs any task; it does not know which tasks exist or who launched it.
    "train": {"sweep", "report", "cli", "pretrain", "finetune", "demo", "export"},
    # The schema is the bottom of the tree: everything reads it, it reads nothing but errors.
    "config": {"configio", "train", "tasks", "data", "sweep", "report", "cli", "checkpoint"},
}
# Modules every part may import.
ANYWHERE = {"errors"}


def module_names(package: Path) -> dict[str, Path]:
    """Dotted module name -> file, for every .py under ``package``."""
    names = {}
    for path in sorted(package.rglob("*.py")):
        parts = list(path.relative_to(package.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        names[".".join(parts)] = path
    return names


def import_edges(package: Path) -> dict[str, set[str]]:
    """Module -> the package's modules it imports (anywhere in the file)."""
    names = module_names(package)
    top = package.name
    edges: dict[str, set[str]] = {}
    for name, path in names.items():
        here = name if path.name == "__init__.py" else name.rpartition(".")[0]
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, ast.Import):
                targets.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = here.split(".")[:len(here.split(".")) - node.level + 1]
                    module = ".".join(base + ([node.module] if node.module else []))
                else:
                    module = node.module or ""
                for alias in node.names:
                    sub = f"{module}.{alias.name}"
                    targets.add(sub if sub in names else module)
        edges[name] = {_known(t, names) for t in targets if t == top or t.startswith(top + ".")} - {name, None}
    return edges


def _known(target: str, names: dict[str, Path]) -> str | None:
    """The longest known module that ``target`` names (``pkg.mod.Class`` -> ``pkg.mod``)."""
    while target and target not in names:
        target = target.rpartition(".")[0]
    return target or None


def circles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []
    for root in sorted(edges):
        if root in index:
            continue
        work = [(root, iter(sorted(edges[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is None:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    if len(component) > 1:
                        found.append(sorted(component))
            elif child not in index:
                index[child] = low[child] = len(index)
                stack.append(child)
                on_stack.add(child)
                work.append((child, iter(sorted(edges.get(child, ())))))
            elif child in on_stack:
                low[node] = min(low[node], index[child])
    return found


def part(module: str) -> str:
    pieces = module.split(".")
    return pieces[1] if len(pieces) > 1 else ""


def forbidden_edges(edges: dict[str, set[str]], rules: dict[str, set[str]]) -> list[str]:
    bad = []
    for source, targets in sorted(edges.items()):
        for target in sorted(targets):
            if part(target) in ANYWHERE or part(source) == part(target):
                continue
            if part(target) in rules.get(part(source), set()):
                bad.append(f"{source} imports {target} ({part(source)}/ may not import {part(target)})")
    return bad


def test_speechbs_has_no_import_circle() -> None:
    found = circles(import_edges(PACKAGE))
    assert not found, "import circles (break each by moving the shared fact down a layer):\n" + "\n".join(
        " -> ".join(c) for c in found)


def test_speechbs_has_no_forbidden_import() -> None:
    bad = forbidden_edges(import_edges(PACKAGE), FORBIDDEN)
    assert not bad, "imports the layout forbids (docs/architecture.md):\n" + "\n".join(bad)


def private_imports(package: Path) -> list[str]:
    """``from speechbs.X import _name`` where X is another part: a private name used across parts."""
    found = []
    for name, path in module_names(package).items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, ast.ImportFrom) and not node.level and (node.module or "").startswith("speechbs"):
                target = node.module if node.module.count(".") else f"{node.module}.x"
                for alias in node.names:
                    dunder = alias.name.startswith("__") and alias.name.endswith("__")  # __version__
                    if alias.name.startswith("_") and not dunder and part(target) != part(name):
                        found.append(f"{name} imports {alias.name} from {node.module}")
    return found


def test_no_private_name_is_imported_across_parts() -> None:
    found = private_imports(PACKAGE)
    assert not found, "private names used outside their part (make them public or move them):\n" + "\n".join(found)


def test_the_private_import_check_sees_one(tmp_path: Path) -> None:
    root = _package(tmp_path, {"sweep/__init__.py": "", "sweep/plan.py": "from speechbs.configio import _set_dotted\n",
                               "configio.py": "from speechbs.configio import _own\n"})
    assert private_imports(root) == ["speechbs.sweep.plan imports _set_dotted from speechbs.configio"]


def test_the_checker_sees_the_package() -> None:
    """Negative control on the real tree: a known edge is seen (a blind checker passes everything)."""
    edges = import_edges(PACKAGE)
    assert "speechbs.models.encoder" in edges["speechbs.models.wav2vec2"]
    assert "speechbs.errors" in edges["speechbs.config"]
    assert len(edges) > 50


def _package(tmp_path: Path, files: dict[str, str]) -> Path:
    root = tmp_path / "speechbs"
    for name, text in {"__init__.py": "", **files}.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def test_checker_finds_a_circle_through_a_lazy_import(tmp_path: Path) -> None:
    root = _package(tmp_path, {
        "config.py": "def f():\n    from speechbs.models import registry\n",
        "models/__init__.py": "",
        "models/registry.py": "from speechbs.models.hubert import X\n",
        "models/hubert.py": "from ..config import Y\n",
    })
    assert circles(import_edges(root)) == [["speechbs.config", "speechbs.models.hubert", "speechbs.models.registry"]]


@pytest.mark.parametrize("source, line", [
    ("models/hubert.py", "from speechbs.targets.labels import ClusterTargets\n"),
    ("models/hubert.py", "import speechbs.checkpoint\n"),
    ("data/batching.py", "from speechbs.train import loop\n"),
    ("train/loop.py", "def f():\n    from speechbs.sweep.plan import x\n"),
])
def test_checker_finds_a_forbidden_edge(tmp_path: Path, source: str, line: str) -> None:
    root = _package(tmp_path, {
        "models/__init__.py": "", "data/__init__.py": "", "train/__init__.py": "", "targets/__init__.py": "",
        "sweep/__init__.py": "", "checkpoint.py": "", "targets/labels.py": "", "train/loop.py": "",
        "sweep/plan.py": "", source: line,
    })
    bad = forbidden_edges(import_edges(root), FORBIDDEN)
    assert len(bad) == 1 and bad[0].startswith(source.removesuffix(".py").replace("/", ".").join(["speechbs.", ""])), bad


def test_allowed_edges_pass(tmp_path: Path) -> None:
    root = _package(tmp_path, {
        "models/__init__.py": "", "models/hubert.py": "from speechbs.errors import ConfigError\n",
        "errors.py": "", "train/__init__.py": "", "train/loop.py": "from speechbs.models import hubert\n",
    })
    assert forbidden_edges(import_edges(root), FORBIDDEN) == []
    assert circles(import_edges(root)) == []
