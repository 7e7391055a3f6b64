"""The decorators' marks on a view, read through what stands between it and Django.

``accept_websocket`` and ``require_websocket`` mark the function they return
(``accept_websocket``, ``require_websocket``, ``_dwebsocket_view``); ``functools.wraps``
copies the marks onto the wrapper of a decorator applied over it, but a
``functools.partial`` of a decorated view carries none of them, and neither does a
wrapper of such a partial. Django calls the partial, which calls the decorated view: the
marks are there, one layer down (:func:`layers`).

A leaf: imports nothing (the middleware and the system checks import it).
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import partial
from typing import Any

__all__ = ["layers", "mark"]

_MISSING = object()


def layers(view: Any) -> Iterator[Any]:
    """``view``, then each callable it wraps, outermost first: a decorator's
    (``functools.wraps``' ``__wrapped__``: login_required, never_cache...) and a
    ``functools.partial``'s (``func``). Stops at a cycle of ``__wrapped__``."""
    seen: set[int] = set()
    while view is not None and id(view) not in seen:
        seen.add(id(view))
        yield view
        view = view.func if isinstance(view, partial) else getattr(view, "__wrapped__", None)


def mark(view: Any, name: str) -> Any:
    """The attribute ``name`` of the outermost of ``view``'s :func:`layers` that has one,
    else None: what ``functools.wraps`` would have copied onto ``view`` had no partial
    stood in the way."""
    for layer in layers(view):
        value = getattr(layer, name, _MISSING)
        if value is not _MISSING:
            return value
    return None
