"""The docs say what the code does: every setting with its default, every public name
in the API reference. (``make docs`` builds them with warnings as errors.)"""

from __future__ import annotations

import re
from pathlib import Path
from types import ModuleType

import pytest

import dwebsocket
from dwebsocket.conf import DEFAULTS

DOCS = Path(__file__).resolve().parent.parent.parent / "docs"


def documented_default(value: object) -> str:
    """How docs/settings.rst spells a default."""
    return str(value) if type(value) is int else repr(value).replace("'", '"')


def settings_table() -> dict[str, str]:
    """``{setting: its default cell}`` from the list-table of docs/settings.rst."""
    rows = re.findall(
        r"^   \* - ``(WEBSOCKET_\w+)``\n     - (.*)$", (DOCS / "settings.rst").read_text(), re.M
    )
    return dict(rows)


@pytest.mark.parametrize("name", sorted(DEFAULTS))
def test_every_setting_is_documented_with_its_default(name: str) -> None:
    table = settings_table()
    assert name in table, f"{name} is missing from docs/settings.rst"
    assert documented_default(DEFAULTS[name]) in table[name]


def test_the_settings_page_documents_no_unknown_setting() -> None:
    assert set(settings_table()) <= set(DEFAULTS)


@pytest.mark.parametrize("name", sorted(set(dwebsocket.__all__) - {"__version__"}))
def test_every_public_name_is_in_the_api_reference(name: str) -> None:
    api = (DOCS / "api.rst").read_text()
    module = getattr(dwebsocket, name).__module__
    documented = f".. autofunction:: {module}.{name}" in api or (
        f".. autoclass:: {module}.{name}" in api
    )
    whole_module = re.search(rf"^\.\. automodule:: {re.escape(module)}\n   :members:$", api, re.M)
    assert documented or whole_module, f"{module}.{name} is not in docs/api.rst"


def api_directives() -> list[tuple[str, str, list[str] | None]]:
    """``(directive, target, members)`` of each autodoc directive in docs/api.rst;
    ``members`` None when the directive has no ``:members:`` option, [] for a bare one
    (all of ``__all__``)."""
    found: list[tuple[str, str, list[str] | None]] = []
    pattern = re.compile(r"^\.\. (auto\w+):: (\S+)\n((?:   :.*\n)*)", re.M)
    for directive, target, options in pattern.findall((DOCS / "api.rst").read_text()):
        members = re.search(r"^   :members:(.*)$", options, re.M)
        names = None if members is None else [n.strip() for n in members[1].split(",") if n.strip()]
        found.append((directive, target, names))
    return found


def documented_names() -> dict[str, set[str] | None]:
    """``{module: the names of its __all__ the reference documents}`` (None: all)."""
    import importlib

    documented: dict[str, set[str] | None] = {}
    for directive, target, members in api_directives():
        if directive == "automodule":
            importlib.import_module(target)
            if members == []:
                documented[target] = None
            elif members is not None:
                documented.setdefault(target, set())
                names = documented[target]
                if names is not None:
                    names.update(members)
        elif directive in ("autofunction", "autoclass", "autodata", "autoexception"):
            module, _, name = target.rpartition(".")
            documented.setdefault(module, set())
            names = documented[module]
            if names is not None:
                names.add(name)
    return documented


def reexported(module: ModuleType) -> set[str]:
    """The names ``module`` imports at module level (re-exports: documented at home)."""
    import ast

    assert module.__file__ is not None
    tree = ast.parse(Path(module.__file__).read_text())
    return {
        alias.asname or alias.name
        for node in tree.body
        if isinstance(node, ast.ImportFrom)
        for alias in node.names
    }


def test_the_api_reference_documents_exactly_what_modules_export() -> None:
    """Every module docs/api.rst names: each name of its ``__all__`` (but those it
    re-exports from another module) is documented, and nothing it documents is missing
    from ``__all__``."""
    import importlib

    problems = []
    for module_name, names in sorted(documented_names().items()):
        module = importlib.import_module(module_name)
        exported = set(getattr(module, "__all__", ()))
        assert exported, f"{module_name} has no __all__"
        if names is None:
            continue  # automodule with every member: autodoc follows __all__
        own = exported - reexported(module)
        problems += [f"{module_name}.{n}: documented, not in __all__" for n in names - exported]
        problems += [f"{module_name}.{n}: in __all__, not documented" for n in own - names]
    assert not problems, "\n".join(problems)


def test_the_architecture_page_names_every_module() -> None:
    """docs/internals/architecture.rst has a paragraph per module: a new module (a new
    file name, or a new package) must get one."""
    page = (DOCS / "internals" / "architecture.rst").read_text()
    package = DOCS.parent / "dwebsocket"
    missing = []
    for path in sorted(package.rglob("*.py")):
        relative = path.relative_to(package)
        if path.name == "__init__.py":
            named = f"{relative.parent.as_posix()}/" if relative.parent.parts else "__init__.py"
        else:
            named = path.name
        if f"``{named}" not in page and f"/{named}``" not in page and f"{named}``" not in page:
            missing.append(relative.as_posix())
    assert not missing, f"not in docs/internals/architecture.rst: {missing}"


def test_the_tests_and_files_the_pages_cite_exist() -> None:
    """A page that says "proven by ``test_x``" or "see ``tests/y.py``" names a test that
    is there: renaming one must update the page (docs/internals excepted: its own)."""
    repo = DOCS.parent
    tests = "\n".join(path.read_text() for path in (repo / "tests").rglob("*.py"))
    pages = [repo / "README.rst", *sorted(DOCS.glob("*.rst"))]
    text = "\n".join(page.read_text() for page in pages)
    missing = sorted(
        {name for name in re.findall(r"``(test_\w+)``", text) if f"def {name}(" not in tests}
    )
    cited = r"\b((?:tests|bench|examples|tools)/[\w./-]+\.(?:py|json|js))\b"
    missing += sorted({path for path in re.findall(cited, text) if not (repo / path).exists()})
    assert not missing, f"cited by the docs, not in the repository: {missing}"
