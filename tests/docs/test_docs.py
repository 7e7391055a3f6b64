"""The docs say what the code does: every setting with its default, every public name
in the API reference. (``make docs`` builds them with warnings as errors.)"""

from __future__ import annotations

import re
from pathlib import Path

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
