"""The package layout has no import cycles: a prior's mathematics lives with the prior, and training, pruning
and the methods build on the layers and priors, never the other way round (issue 12)."""

import ast
import sys
from pathlib import Path

PACKAGE = Path(__file__).parents[1] / "bayescompress"


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """bayescompress modules imported anywhere in ``path`` (function bodies too), except under TYPE_CHECKING."""
    tree = ast.parse(path.read_text())
    skipped = {id(node) for guard in ast.walk(tree) if isinstance(guard, ast.If)
               and getattr(guard.test, "id", None) == "TYPE_CHECKING" for node in ast.walk(guard)}
    found = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("bayescompress"):
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)  # `from pkg import module`
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.startswith("bayescompress"))
    return found


def _graph() -> dict[str, set[str]]:
    """Module -> the package modules it imports; the root package is left out, since Python runs a parent
    package's __init__ before any of its modules anyway."""
    modules = {_module_name(path): path for path in PACKAGE.rglob("*.py")}
    root = PACKAGE.name
    return {name: {target for target in _imports(path) if target in modules and target not in (name, root)}
            for name, path in modules.items()}


def _subpackage(module: str) -> str:
    return ".".join(module.split(".")[:2])


def test_subpackages_import_each_other_without_a_cycle():
    edges = {}
    for source, targets in _graph().items():
        for target in targets:
            if _subpackage(source) != _subpackage(target):
                edges.setdefault(_subpackage(source), set()).add(_subpackage(target))
    state: dict[str, str] = {}

    def visit(node, path):
        state[node] = "open"
        for nxt in sorted(edges.get(node, ())):
            assert state.get(nxt) != "open", "import cycle: " + " -> ".join(path + [nxt])
            if nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = "done"

    for node in sorted(edges):
        if node not in state:
            visit(node, [node])


def test_priors_import_neither_layers_nor_training_nor_pruning():
    graph = _graph()
    for module, targets in graph.items():
        if module.startswith("bayescompress.priors"):
            outside = {_subpackage(t) for t in targets} - {"bayescompress.priors", "bayescompress._validation"}
            assert not outside, f"{module} imports {sorted(outside)}"


def test_the_layout_test_sees_a_cycle_when_there_is_one(tmp_path, monkeypatch):
    (tmp_path / "bayescompress" / "a").mkdir(parents=True)
    (tmp_path / "bayescompress" / "b").mkdir()
    (tmp_path / "bayescompress" / "__init__.py").write_text("")
    (tmp_path / "bayescompress" / "a" / "__init__.py").write_text("def f():\n    from bayescompress.b import g\n")
    (tmp_path / "bayescompress" / "b" / "__init__.py").write_text("from bayescompress.a import f\n")
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE", tmp_path / "bayescompress")
    try:
        test_subpackages_import_each_other_without_a_cycle()
    except AssertionError as error:
        assert "import cycle" in str(error)
    else:
        raise AssertionError("the cycle between a and b was not found")
