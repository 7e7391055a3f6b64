"""The import graph of ``dwebsocket``: no circle, and the layers import what
``docs/internals/architecture.rst`` says they may.

The graph is read statically (``ast``) from every ``dwebsocket/**.py``, and holds what runs
when a module is imported: module-level imports (in ``if``/``try``/``with`` blocks and class
bodies too), not those under ``if TYPE_CHECKING:`` nor inside functions -- an import inside
a function is how a circle is legitimately broken. A circle of module-level imports works
or fails depending on which module is imported first (and on what runs in between: a
signal handler, a thread); CI has seen both.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "dwebsocket"


def _modules() -> dict[str, tuple[Path, bool]]:
    """``{dotted name: (path, is a package)}`` for every module of dwebsocket."""
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        if is_package:
            parts.pop()
        found[".".join(parts)] = (path, is_package)
    return found


MODULES = _modules()


def _lazy_exports() -> dict[str, str]:
    """``dwebsocket.__init__``'s ``_EXPORTS``: ``from dwebsocket import name`` imports
    the module it names right then (PEP 562 ``__getattr__``)."""
    tree = ast.parse(MODULES["dwebsocket"][0].read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "_EXPORTS" for t in node.targets
        ):
            value = ast.literal_eval(node.value)
            assert isinstance(value, dict)
            return value
    return {}


EXPORTS = _lazy_exports()


def _run_at_import(body: list[ast.stmt]) -> Iterator[ast.Import | ast.ImportFrom]:
    """The import statements of ``body`` that run when the module is imported."""
    for node in body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        elif isinstance(node, ast.If):
            if "TYPE_CHECKING" not in ast.unparse(node.test):
                yield from _run_at_import(node.body)
            yield from _run_at_import(node.orelse)
        elif isinstance(node, ast.Try):
            yield from _run_at_import(node.body)
            for handler in node.handlers:
                yield from _run_at_import(handler.body)
            yield from _run_at_import(node.orelse)
            yield from _run_at_import(node.finalbody)
        elif isinstance(node, (ast.With, ast.ClassDef)):
            yield from _run_at_import(node.body)


def _targets(module: str, is_package: bool, node: ast.Import | ast.ImportFrom) -> set[str]:
    """The dwebsocket modules that importing ``node`` (in ``module``) runs."""
    names: list[str] = []
    if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
    else:
        if node.level:
            base = module.split(".")[: len(module.split(".")) - (0 if is_package else 1)]
            base = base[: len(base) - (node.level - 1)]
            source = ".".join([*base, node.module] if node.module else base)
        else:
            source = node.module or ""
        names.append(source)
        for alias in node.names:
            if f"{source}.{alias.name}" in MODULES:
                names.append(f"{source}.{alias.name}")
            elif source == "dwebsocket" and alias.name in EXPORTS:
                names.append(EXPORTS[alias.name])
    targets = set()
    for name in names:
        parts = name.split(".")
        for end in range(1, len(parts) + 1):
            prefix = ".".join(parts[:end])
            # A package that contains ``module`` is already being imported: importing a
            # sibling does not run it again.
            if prefix in MODULES and not (module + ".").startswith(prefix + "."):
                targets.add(prefix)
    targets.discard(module)
    return targets


def import_graph() -> dict[str, set[str]]:
    """``{module: the dwebsocket modules its import runs}``."""
    graph = {}
    for module, (path, is_package) in MODULES.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        graph[module] = set()
        for node in _run_at_import(tree.body):
            graph[module] |= _targets(module, is_package, node)
    return graph


GRAPH = import_graph()


def find_circle(graph: dict[str, set[str]]) -> list[str] | None:
    """One circle of ``graph`` as a path (first == last), or None."""
    done: set[str] = set()

    def visit(module: str, path: list[str]) -> list[str] | None:
        if module in path:
            return [*path[path.index(module) :], module]
        if module in done:
            return None
        for target in sorted(graph[module]):
            circle = visit(target, [*path, module])
            if circle is not None:
                return circle
        done.add(module)
        return None

    for module in sorted(graph):
        circle = visit(module, [])
        if circle is not None:
            return circle
    return None


def test_the_walk_sees_imports() -> None:
    """The walk itself: a relative, an absolute and a lazy top-level import."""
    assert "dwebsocket.backends.uwsgi.wsgi" in GRAPH["dwebsocket.backends.uwsgi.checks"]
    assert "dwebsocket.conf" in GRAPH["dwebsocket.metrics"]
    assert "dwebsocket.metrics" in GRAPH["dwebsocket.handshake"]  # from dwebsocket import metrics
    # Nothing under TYPE_CHECKING, nothing inside a function.
    assert "dwebsocket.websocket" not in GRAPH["dwebsocket.metrics"]
    assert "dwebsocket.groups.history" not in GRAPH["dwebsocket.conf"]


def test_find_circle() -> None:
    assert find_circle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_circle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_no_import_circle() -> None:
    circle = find_circle(GRAPH)
    assert circle is None, "import circle: " + " -> ".join(circle or [])


def _reachable(start: str) -> set[str]:
    seen: set[str] = set()
    todo = [start]
    while todo:
        module = todo.pop()
        for target in GRAPH[module]:
            if target not in seen:
                seen.add(target)
                todo.append(target)
    return seen


LEAVES = [
    "dwebsocket.typing",
    "dwebsocket.exceptions",
    "dwebsocket.signals",
    "dwebsocket.log",
    "dwebsocket.db",
    "dwebsocket.worker",
    "dwebsocket.marks",
    "dwebsocket.contrib.gunicorn",
    "dwebsocket.contrib.shutdown",
]


@pytest.mark.parametrize("module", LEAVES)
def test_leaf_modules_import_nothing_of_ours(module: str) -> None:
    assert GRAPH[module] == set()


@pytest.mark.parametrize(
    "module", sorted(m for m in MODULES if m.startswith("dwebsocket.protocol"))
)
def test_the_protocol_core_imports_itself_and_two_leaves(module: str) -> None:
    """Sans-I/O: nothing of dwebsocket but itself, ``typing`` and ``exceptions``; no
    Django, no socket, no uwsgi (not even inside a function)."""
    allowed = {"dwebsocket.typing", "dwebsocket.exceptions"}
    assert {m for m in GRAPH[module] if not m.startswith("dwebsocket.protocol")} <= allowed
    for _node, name in _every_import(MODULES[module][0]):
        assert name.split(".")[0] not in {"django", "socket", "select", "uwsgi"}, (module, name)


SESSION_LAYER = {"dwebsocket.session", "dwebsocket.decorators", "dwebsocket.middleware"}


def test_nothing_below_the_session_layer_imports_it() -> None:
    importers = {m for m, targets in GRAPH.items() if targets & SESSION_LAYER}
    assert importers <= SESSION_LAYER | {"dwebsocket.apps"}, importers - SESSION_LAYER


def _every_import(path: Path) -> Iterator[tuple[ast.Import | ast.ImportFrom, str]]:
    """Every import statement of ``path``, at any depth, with the module it names."""
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node, alias.name
        elif isinstance(node, ast.ImportFrom):
            yield node, "." * node.level + (node.module or "")


def test_the_default_backend_never_imports_the_uwsgi_backend() -> None:
    """Not even inside a function: under uWSGI the default backend's takeover
    (``takeovers.uwsgi_connection``) imports ``uwsgi`` itself, nothing of
    ``dwebsocket.backends.uwsgi``."""
    for module, (path, _) in MODULES.items():
        if module.startswith("dwebsocket.backends.default"):
            for _node, name in _every_import(path):
                assert not name.startswith("dwebsocket.backends.uwsgi"), (module, name)
                assert not name.startswith(".."), (module, name)


def test_uwsgi_is_imported_inside_functions_only_outside_the_uwsgi_backend() -> None:
    for module, (path, _) in MODULES.items():
        tree = ast.parse(path.read_text())
        at_import = {alias.name for node in _run_at_import(tree.body) for alias in node.names}
        if not module.startswith("dwebsocket.backends.uwsgi"):
            assert "uwsgi" not in at_import, module
