"""Every setting dwebsocket reads is documented, with its name, in README and docs."""

from __future__ import annotations

from pathlib import Path

import pytest

from dwebsocket.conf import DEFAULTS

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("doc", ["README.rst", "docs/settings.rst"])
def test_every_setting_is_documented(doc: str) -> None:
    text = (REPO / doc).read_text()
    missing = [name for name in DEFAULTS if f"``{name}``" not in text]
    assert missing == []
