"""The shape of the shipped packages: who may import whom, and who may touch what.

- ``gateway`` and ``mobile`` are peers on the node kit (``mpa_ike.node``): neither
  imports the other.
- No shipped module imports ``tests``.
- In ``mpa_ike`` an object's underscore attributes are touched only through ``self`` or
  ``cls``.
- The modules of ``mpa_ike`` import each other without a cycle, counting every import
  (one inside a function or under ``TYPE_CHECKING`` only hides a cycle).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import mpa_ike

SHIPPED = ("mpa_ike", "gateway", "mobile", "mpa_bench", "mpa_testbed", "mpa_harness")
ROOT = Path(mpa_ike.__file__).resolve().parents[1]


def modules(package: str) -> Iterator[tuple[str, ast.Module]]:
    base = ROOT / package
    for path in sorted(base.rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        yield ".".join(parts), ast.parse(path.read_text(), str(path))


def imported(module: str, tree: ast.AST) -> Iterator[str]:
    """The absolute names ``tree`` imports (``from a import b`` gives ``a`` and ``a.b``)."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = resolve(module, node)
            yield base
            yield from (f"{base}.{alias.name}" for alias in node.names)


def resolve(module: str, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    package = module.split(".")
    is_package = (ROOT / Path(*package) / "__init__.py").exists()
    anchor = package if is_package else package[:-1]
    anchor = anchor[: len(anchor) - node.level + 1]
    return ".".join([*anchor, *([node.module] if node.module else [])])


def test_gateway_and_mobile_are_peers() -> None:
    for importer, imported_package in (("gateway", "mobile"), ("mobile", "gateway")):
        for name, tree in modules(importer):
            bad = [i for i in imported(name, tree) if i.split(".")[0] == imported_package]
            assert not bad, f"{name} imports {bad}"


def test_no_shipped_module_imports_tests() -> None:
    for package in SHIPPED:
        for name, tree in modules(package):
            bad = [i for i in imported(name, tree) if i.split(".")[0] == "tests"]
            assert not bad, f"{name} imports {bad}"


def private_accesses(tree: ast.AST) -> Iterator[tuple[int, str]]:
    for node in ast.walk(tree):
        if not isinstance(node, ast.Attribute):
            continue
        attr = node.attr
        if not attr.startswith("_") or attr.endswith("_"):
            continue  # public, dunder, or an enum's sunder (_value_)
        owner = node.value
        if isinstance(owner, ast.Name) and owner.id in ("self", "cls"):
            continue
        yield node.lineno, ast.unparse(node)


def test_no_access_to_another_objects_private_attributes() -> None:
    found = [
        f"{name}:{line}: {text}"
        for name, tree in modules("mpa_ike")
        for line, text in private_accesses(tree)
    ]
    assert not found, "\n".join(found)


def test_private_access_scan_finds_what_it_should() -> None:
    tree = ast.parse("def f(sa, self):\n    sa._state = 1\n    self._ok = 2\n    x.__class__\n")
    assert [text for _, text in private_accesses(tree)] == ["sa._state"]


def import_graph() -> dict[str, set[str]]:
    trees = dict(modules("mpa_ike"))
    graph: dict[str, set[str]] = {}
    for name, tree in trees.items():
        targets = {i for i in imported(name, tree) if i in trees}
        graph[name] = targets - {name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    found: list[list[str]] = []
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for target in sorted(graph.get(node, ())):
            if state.get(target) == 1:
                found.append([*stack[stack.index(target) :], target])
            elif target not in state:
                visit(target)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)
    return found


def test_no_import_cycle_in_mpa_ike() -> None:
    # A package's __init__ importing its own modules is not a cycle of concepts.
    graph = {
        name: {t for t in targets if not name.startswith(t + ".") and not t.startswith(name + ".")}
        for name, targets in import_graph().items()
    }
    found = cycles(graph)
    assert not found, "\n".join(" -> ".join(cycle) for cycle in found)


def test_cycle_finder_finds_a_cycle() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == [["a", "b", "c", "a"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def sys_path_edits(tree: ast.AST) -> Iterator[int]:
    """Lines that change ``sys.path`` (``sys.path.insert``, ``.append``, assignment)."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and ast.unparse(node.value) == "sys.path":
            yield node.lineno
        elif isinstance(node, ast.Assign | ast.AugAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            if any(ast.unparse(t) == "sys.path" for t in targets):
                yield node.lineno


def test_nothing_edits_sys_path() -> None:
    """Tests and shipped code import the installed packages, never a path of their own."""
    paths = [p for d in (*SHIPPED, "tests") for p in sorted((ROOT / d).rglob("*.py"))]
    bad = [
        f"{path.relative_to(ROOT)}:{line}"
        for path in paths
        for line in sys_path_edits(ast.parse(path.read_text(), str(path)))
    ]
    assert not bad, bad


def test_sys_path_scan_finds_what_it_should() -> None:
    tree = ast.parse("import sys\nsys.path.insert(0, 'x')\nsys.path += ['y']\n")
    assert sorted(sys_path_edits(tree)) == [2, 3]
