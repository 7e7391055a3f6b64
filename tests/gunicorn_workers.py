"""A gunicorn worker class of a project's own (``-k tests.gunicorn_workers.SyncSubclass``):
``dwebsocket.contrib.gunicorn`` must know it for what it derives from."""

from __future__ import annotations

from gunicorn.workers.sync import SyncWorker


class SyncSubclass(SyncWorker):  # type: ignore[misc]
    """gunicorn's sync worker, under another name."""
