"""A server's known defect, shown where it shows: the base of the strict xfails.

A test that a server's own defect makes impossible is a *strict* xfail with
``raises=DefectShown``: only the defect's own signature raises :class:`DefectShown`, so a
test that fails earlier for another reason (a regression of ours) fails the run, and a
server that fixed the defect makes the test pass, which fails the run too and shows up.
uWSGI's defects are named in ``tests/backends/uwsgi/defects.py``; the ASGI servers' in
``tests/asgi/``.
"""

from __future__ import annotations

__all__ = ["DefectShown", "check"]


class DefectShown(AssertionError):
    """What a test observed is exactly what a named server defect predicts."""


def check(defect: str, observed: object, *, correct: object, signature: object) -> None:
    """The point where ``defect`` (its description) shows. ``observed == correct``:
    nothing (a server that fixed it; the strict xfail then fails the run). ``observed ==
    signature`` (or ``signature(observed)`` if callable): :class:`DefectShown`. Anything
    else fails the test as itself."""
    if observed == correct:
        return
    shows = signature(observed) if callable(signature) else observed == signature
    if shows:
        raise DefectShown(f"{defect}: observed {observed!r}")
    raise AssertionError(
        f"neither the correct {correct!r} nor the signature of {defect!r}: {observed!r}"
    )
