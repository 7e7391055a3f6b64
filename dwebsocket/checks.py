"""System checks for dwebsocket's settings (``manage.py check``).

Ids are stable; each has a test in ``tests/test_checks.py``:

- ``dwebsocket.W001``: a ``WEBSOCKET_*`` setting dwebsocket does not know (a typo?).
- ``dwebsocket.W002``: running in gunicorn's sync worker: one connection per process,
  cut by ``--timeout``.
- ``dwebsocket.W003``: running in a gunicorn gthread worker with one thread.
- ``dwebsocket.W007``: running in a gunicorn worker without ``dwebsocket.contrib.gunicorn``:
  a stop or reload cuts open WebSockets without a close frame.
- ``dwebsocket.W004``: ``ATOMIC_REQUESTS`` wraps a WebSocket view in a transaction that
  lasts the whole session (or, for an ``async def`` view, makes Django refuse to run it).
- ``dwebsocket.I001``: ``async def`` WebSocket views in the URLconf: ASGI servers only
  (501 under WSGI).
- ``dwebsocket.E001``: ``WebSocketMiddleware`` in ``MIDDLEWARE_CLASSES``, which Django
  ignores.
- ``dwebsocket.E010``: ``WEBSOCKET_ALLOWED_ORIGINS`` is not None or a list of origins (a
  bare string, or an entry that is not one of the documented forms).
- ``dwebsocket.E011`` to ``dwebsocket.E025`` and ``dwebsocket.E030`` to ``dwebsocket.E032``:
  one per setting, of the wrong type or out of range (``dwebsocket.conf.SETTINGS`` gives
  each its id; ``docs/settings.rst`` lists them).
- ``dwebsocket.W005``: ``WEBSOCKET_ACCEPT_ALL`` without ``WebSocketMiddleware`` (or a
  subclass of it, which counts as it for E001 and W006 too).
- ``dwebsocket.W006``: middleware with a ``process_view`` listed after
  ``WebSocketMiddleware`` (it does not run for WebSocket views).
- ``dwebsocket.W010`` (``check --deploy``): any origin may open a WebSocket (``"*"``).
- ``dwebsocket.W011`` (``check --deploy``): the allowed origins name development hosts
  (``localhost``, ``127.0.0.1``, ``[::1]``).
- ``dwebsocket.W012`` (``check --deploy``): gunicorn installed, its hooks named nowhere
  this process can see.
- ``dwebsocket.W013``: the URLconf routes dwebsocket's ``/metrics`` view but
  ``prometheus_client`` is not installed (it answers 503).
- ``dwebsocket.W008``: the uwsgi backend without its WSGI wrapper
  (``dwebsocket.backends.uwsgi.checks``; tested in ``tests/backends/uwsgi/test_wsgi.py``).

W002/W003/W007 can only be known inside a gunicorn worker (``dwebsocket.worker``):
:func:`report_once` runs :func:`check_server` there and logs what it finds.
"""

from __future__ import annotations

import difflib
import importlib.util
import logging
from collections.abc import Callable, Sequence
from typing import Any

from django.apps import AppConfig
from django.conf import settings as django_settings
from django.core import checks
from django.core.checks import CheckMessage, Tags, register

from dwebsocket.backends.uwsgi.checks import check_wsgi_wrapper
from dwebsocket.conf import ACCEPT_ALL, DEFAULTS, FACTORY_CLASS, GROUPS_URL, SETTINGS
from dwebsocket.exceptions import InvalidSetting
from dwebsocket.marks import layers
from dwebsocket.worker import gunicorn_worker

__all__ = [
    "check_allowed_origins",
    "check_async_views",
    "check_atomic_requests",
    "check_deploy_gunicorn",
    "check_deploy_origins",
    "check_metrics_view",
    "check_middleware",
    "check_server",
    "check_settings",
    "check_unknown_settings",
    "report_once",
]

MIDDLEWARE_PATH = "dwebsocket.middleware.WebSocketMiddleware"


@register(Tags.compatibility)
def check_unknown_settings(
    app_configs: Sequence[AppConfig] | None = None, **kwargs: Any
) -> list[CheckMessage]:
    """``dwebsocket.W001`` for each ``WEBSOCKET_*`` setting that is not in ``conf.DEFAULTS``."""
    messages: list[CheckMessage] = []
    for name in sorted(dir(django_settings)):
        if not name.startswith("WEBSOCKET_") or name in DEFAULTS:
            continue
        close = difflib.get_close_matches(name, DEFAULTS, n=1)
        hint = (
            f"Did you mean {close[0]}?"
            if close
            else ("dwebsocket reads: " + ", ".join(sorted(DEFAULTS)))
        )
        messages.append(
            checks.Warning(
                f"Unknown dwebsocket setting {name}; it has no effect.",
                hint=hint,
                id="dwebsocket.W001",
            )
        )
    return messages


@register(Tags.compatibility)
def check_settings(
    app_configs: Sequence[AppConfig] | None = None, **kwargs: Any
) -> list[CheckMessage]:
    """An error for each ``WEBSOCKET_*`` setting of the wrong type or out of range, with
    that setting's own id (``conf.SETTINGS``). ``WEBSOCKET_FACTORY_CLASS`` is imported;
    ``WEBSOCKET_GROUPS_URL`` must name a layer. ``WEBSOCKET_ALLOWED_ORIGINS`` has its own
    check (:func:`check_allowed_origins`)."""
    messages: list[CheckMessage] = []
    for setting in SETTINGS.values():
        value = getattr(django_settings, setting.name, setting.default)
        problem = setting.problem(value)
        if problem is None and setting is FACTORY_CLASS:
            from dwebsocket.factory import get_factory_class

            try:
                get_factory_class()
            except InvalidSetting as exc:
                problem = exc.problem
        elif problem is None and setting is GROUPS_URL and isinstance(value, str):
            from dwebsocket.groups import url_problem

            problem = url_problem(value)
        if problem is not None:
            messages.append(
                checks.Error(
                    problem,
                    hint=f"The default is {setting.default!r}; see dwebsocket's settings "
                    "documentation.",
                    id=setting.check_id,
                )
            )
    return messages


@register(Tags.security)
def check_allowed_origins(
    app_configs: Sequence[AppConfig] | None = None, **kwargs: Any
) -> list[CheckMessage]:
    """``dwebsocket.E010`` for each problem with ``WEBSOCKET_ALLOWED_ORIGINS``."""
    from dwebsocket.conf import settings
    from dwebsocket.handshake import origin_setting_errors

    return [
        checks.Error(
            problem,
            hint='Use a list: WEBSOCKET_ALLOWED_ORIGINS = ["https://example.com"], '
            '["https://*.example.com"], [".example.com"] or ["*"].',
            id="dwebsocket.E010",
        )
        for problem in origin_setting_errors(settings.WEBSOCKET_ALLOWED_ORIGINS)
    ]


def check_server(
    app_configs: Sequence[AppConfig] | None = None, **kwargs: Any
) -> list[CheckMessage]:
    """W002/W003/W007 for the gunicorn worker running this process (nothing outside one).

    Not registered with Django: it says nothing in ``manage.py check``; see the module
    docstring."""
    worker = gunicorn_worker()
    if worker is None:
        return []
    messages: list[CheckMessage] = []
    if worker.kind == "sync":
        messages.append(
            checks.Warning(
                "gunicorn's sync worker serves one connection per process at a time, and "
                f"kills a request after --timeout ({worker.timeout:g} s): every WebSocket "
                "will be cut.",
                hint="Run gunicorn with -k gevent, or -k gthread --threads N "
                "(see dwebsocket's deployment docs).",
                id="dwebsocket.W002",
            )
        )
    elif worker.kind == "gthread" and worker.threads <= 1:
        messages.append(
            checks.Warning(
                "gunicorn's gthread worker runs with one thread: one open WebSocket "
                "takes it, and the process serves nothing else until it closes.",
                hint="Give it as many threads as connections per process: --threads N.",
                id="dwebsocket.W003",
            )
        )
    if not worker.hooks:
        messages.append(
            checks.Warning(
                "gunicorn runs without dwebsocket's hooks: on a stop or reload, open "
                "WebSockets get no close frame (1001) and hold the worker until "
                "--graceful-timeout.",
                hint="Start gunicorn with -c python:dwebsocket.contrib.gunicorn, or import "
                "its hooks in your gunicorn.conf.py.",
                id="dwebsocket.W007",
            )
        )
    return messages


logger = logging.getLogger("dwebsocket")
_reported = False


def report_once() -> None:
    """Log the server checks' findings at WARNING, once per process (the gunicorn hooks'
    ``post_worker_init`` and every WebSocket session's start call it). Does not block;
    never raises."""
    global _reported
    if _reported:
        return
    _reported = True
    try:
        messages = check_server()
    except Exception:  # a failing check must never fail the request that runs it
        logger.exception("dwebsocket's server checks failed")
        return
    for message in messages:
        logger.warning("%s", message)


def _views(patterns: Any, keep: Callable[[Any], bool], prefix: str = "") -> list[tuple[str, Any]]:
    """``(route, view)`` for every view in the URLconf that ``keep`` keeps."""
    from django.urls import URLPattern, URLResolver

    found: list[tuple[str, Any]] = []
    for pattern in patterns:
        if isinstance(pattern, URLResolver):
            found += _views(pattern.url_patterns, keep, prefix + str(pattern.pattern))
        elif isinstance(pattern, URLPattern) and keep(pattern.callback):
            found.append((prefix + str(pattern.pattern), pattern.callback))
    return found


def _websocket_views(patterns: Any) -> list[tuple[str, Any]]:
    """``(route, view)`` for every view in the URLconf decorated for WebSockets, class-based
    views whose handler is (``method_decorator`` on ``get``) included."""
    return _views(patterns, _is_websocket_view)


def _is_websocket_view(view: Any) -> bool:
    """Whether ``view``, or a view it calls (:func:`layers`), carries the decorators' marks."""
    return any(_marked(layer) for layer in layers(view))


def _marked(view: Any) -> bool:
    if getattr(view, "accept_websocket", False) or getattr(view, "require_websocket", False):
        return True
    view_class = getattr(view, "view_class", None)  # View.as_view()'s
    return any(
        getattr(getattr(view_class, method, None), "_dwebsocket_view", False)
        for method in getattr(view_class, "http_method_names", ())
    )


def _view_name(view: Any) -> str:
    """The dotted name of the function at the heart of ``view`` (:func:`layers`): a
    ``functools.partial`` has none, and a decorator that wraps one takes its module."""
    *_, inner = layers(view)
    return f"{getattr(inner, '__module__', '?')}.{getattr(inner, '__qualname__', '?')}"


# Tags.urls, not Tags.database: it reads settings and the URLconf, and Django 6.1 runs
# database-tagged checks only for ``check --database``.
@register(Tags.urls)
def check_atomic_requests(
    app_configs: Sequence[AppConfig] | None = None, **kwargs: Any
) -> list[CheckMessage]:
    """W004 for each WebSocket view that ``ATOMIC_REQUESTS`` wraps in a transaction.

    Only decorated views are: for views the middleware runs, Django has not applied
    ``ATOMIC_REQUESTS`` yet. ``transaction.non_atomic_requests`` on the view stops it."""
    aliases = [
        alias for alias, db in django_settings.DATABASES.items() if db.get("ATOMIC_REQUESTS")
    ]
    if not aliases:
        return []
    try:
        from django.urls import get_resolver

        views = _websocket_views(get_resolver().url_patterns)
    except Exception:  # a broken URLconf: Django's own URL checks report it
        return []
    from asgiref.sync import iscoroutinefunction

    held: dict[tuple[tuple[str, ...], bool], list[str]] = {}
    for route, view in views:
        # Read where Django reads it: on the view it resolves, not on one that view calls.
        atomic = tuple(a for a in aliases if a not in getattr(view, "_non_atomic_requests", set()))
        if atomic:
            name = _view_name(view)
            # Django wraps no async view in the transaction: it refuses to run it.
            key = (atomic, iscoroutinefunction(view))
            held.setdefault(key, []).append(f"{route!r} ({name})")
    # One warning per set of databases (and kind of view), naming every view by route: a
    # project with many WebSocket views reads one message, not one per view.
    messages: list[CheckMessage] = []
    for (atomic, is_async), routes in held.items():
        plural = "s" if len(routes) > 1 else ""
        counted = f"{len(routes)} {'async ' if is_async else ''}view{plural}"
        if is_async:
            msg = (
                f"ATOMIC_REQUESTS ({', '.join(atomic)}) cannot wrap async views: Django "
                f"raises RuntimeError at each request, so every WebSocket request to "
                f"{counted} is answered 500: "
            )
        else:
            msg = (
                f"ATOMIC_REQUESTS ({', '.join(atomic)}) holds a transaction open for the "
                f"whole WebSocket session of {counted}: "
            )
        messages.append(
            checks.Warning(
                msg + ", ".join(routes) + ".",
                hint="Decorate each with django.db.transaction.non_atomic_requests "
                "(outermost) and use transaction.atomic() per message.",
                id="dwebsocket.W004",
            )
        )
    return messages


@register(Tags.urls)
def check_async_views(
    app_configs: Sequence[AppConfig] | None = None, **kwargs: Any
) -> list[CheckMessage]:
    """``dwebsocket.I001`` (information, not a warning: this process cannot know which
    server will run the project): ``async def`` WebSocket views need an ASGI server
    with ``dwebsocket.asgi.get_asgi_application()``; under a WSGI server a WebSocket
    request to one is answered 501 naming that."""
    from asgiref.sync import iscoroutinefunction

    try:
        from django.urls import get_resolver

        views = _websocket_views(get_resolver().url_patterns)
    except Exception:  # a broken URLconf: Django's own URL checks report it
        return []
    routes = [repr(route) for route, view in views if iscoroutinefunction(view)]
    if not routes:
        return []
    return [
        checks.Info(
            f"async WebSocket views ({', '.join(routes)}) run under an ASGI server only: "
            "under a WSGI server (runserver, gunicorn, uWSGI) their WebSocket requests are "
            "answered 501.",
            hint="Serve the project with uvicorn, daphne, hypercorn or granian, its asgi.py "
            "using dwebsocket.asgi.get_asgi_application() (docs: asgi).",
            id="dwebsocket.I001",
        )
    ]


@register(Tags.urls)
def check_metrics_view(
    app_configs: Sequence[AppConfig] | None = None, **kwargs: Any
) -> list[CheckMessage]:
    """W013: the URLconf serves dwebsocket's ``/metrics`` view but ``prometheus_client``
    is not installed, so it answers 503 to every scrape."""
    if importlib.util.find_spec("prometheus_client") is not None:
        return []
    try:
        from django.urls import get_resolver

        from dwebsocket.metrics.views import metrics

        routes = [
            repr(route)
            for route, _ in _views(get_resolver().url_patterns, lambda view: _is(view, metrics))
        ]
    except Exception:  # a broken URLconf: Django's own URL checks report it
        return []
    if not routes:
        return []
    return [
        checks.Warning(
            f"dwebsocket's metrics view is routed ({', '.join(routes)}) but "
            "prometheus_client is not installed: it answers 503 to every scrape.",
            hint="pip install 'dwebsocket[prometheus]', or remove the route.",
            id="dwebsocket.W013",
        )
    ]


@register(Tags.compatibility)
def check_middleware(
    app_configs: Sequence[AppConfig] | None = None, **kwargs: Any
) -> list[CheckMessage]:
    """E001, W005, W006: where ``WebSocketMiddleware`` is (or is not) listed."""
    messages: list[CheckMessage] = []
    middleware = list(getattr(django_settings, "MIDDLEWARE", None) or [])
    old_style = list(getattr(django_settings, "MIDDLEWARE_CLASSES", None) or [])
    # WebSocketMiddleware or a subclass of it (a project's own, listed instead of it).
    ours = _websocket_middleware_index(middleware)
    old_ours = _websocket_middleware_index(old_style)
    if old_ours is not None and ours is None:
        messages.append(
            checks.Error(
                f"{old_style[old_ours]} is in MIDDLEWARE_CLASSES, which Django ignores.",
                hint="Move it to MIDDLEWARE (last).",
                id="dwebsocket.E001",
            )
        )
    # Read raw: a wrong value is check_settings' to report, not a reason to fail here.
    accept_all = getattr(django_settings, ACCEPT_ALL.name, ACCEPT_ALL.default)
    if accept_all is True and ours is None:
        messages.append(
            checks.Warning(
                "WEBSOCKET_ACCEPT_ALL is on but WebSocketMiddleware is not in MIDDLEWARE: "
                "it has no effect.",
                hint=f"Add {MIDDLEWARE_PATH!r} to MIDDLEWARE (last), or decorate the views "
                "with accept_websocket.",
                id="dwebsocket.W005",
            )
        )
    after = (
        [path for path in middleware[ours + 1 :] if _has_process_view(path)]
        if ours is not None
        else []
    )
    if after:
        messages.append(
            checks.Warning(
                f"WebSocketMiddleware runs WebSocket views itself, so the process_view() of "
                f"the middleware after it ({', '.join(after)}) does not run for them.",
                hint="Put it last in MIDDLEWARE.",
                id="dwebsocket.W006",
            )
        )
    return messages


def _websocket_middleware_index(paths: list[Any]) -> int | None:
    """The index of the first entry of ``paths`` that is ``WebSocketMiddleware`` or a
    subclass of it (:func:`dwebsocket.handshake.find_middleware`); None if none is."""
    from dwebsocket.handshake import find_middleware
    from dwebsocket.middleware import WebSocketMiddleware

    found = find_middleware(paths, WebSocketMiddleware)
    return None if found is None else found[0]


# What a browser page served in development comes from; never an origin in production.
_DEVELOPMENT_HOSTS = {"localhost", ".localhost", "127.0.0.1", "[::1]", "::1"}


@register(Tags.security, deploy=True)
def check_deploy_origins(
    app_configs: Sequence[AppConfig] | None = None, **kwargs: Any
) -> list[CheckMessage]:
    """``manage.py check --deploy``: W010 when every origin may open a WebSocket, W011 when
    the allow-list names development hosts."""
    from dwebsocket.handshake import OriginRule, allowed_origins, parse_origin_rule

    patterns, explicit = allowed_origins()
    source = (
        "WEBSOCKET_ALLOWED_ORIGINS" if explicit else "ALLOWED_HOSTS (no WEBSOCKET_ALLOWED_ORIGINS)"
    )
    messages: list[CheckMessage] = []
    # Read as the handshake reads them: parse_origin_rule takes " * " for "*".
    rules = [parse_origin_rule(entry) for entry in patterns] if explicit else patterns
    if "*" in rules:
        messages.append(
            checks.Warning(
                f'{source} contains "*": a page on any site can open a WebSocket with your '
                "users' cookies (cross-site WebSocket hijacking).",
                hint="List the origins of your pages: WEBSOCKET_ALLOWED_ORIGINS = "
                '["https://example.com"].',
                id="dwebsocket.W010",
            )
        )
    development = []
    for entry in patterns:
        rule = parse_origin_rule(entry) if explicit else None
        host = rule.host if isinstance(rule, OriginRule) else str(entry).lower()
        if host in _DEVELOPMENT_HOSTS or host.endswith(".localhost"):
            development.append(entry)
    if development:
        messages.append(
            checks.Warning(
                f"{source} allows development origins: {', '.join(map(repr, development))}.",
                hint="A page served from the user's own machine is not yours in production: "
                "remove them from the deployed settings.",
                id="dwebsocket.W011",
            )
        )
    return messages


_HOOKS = "dwebsocket.contrib.gunicorn"


@register(Tags.compatibility, deploy=True)
def check_deploy_gunicorn(
    app_configs: Sequence[AppConfig] | None = None, **kwargs: Any
) -> list[CheckMessage]:
    """``manage.py check --deploy``: W012 when gunicorn is installed and neither
    ``GUNICORN_CMD_ARGS`` nor ``./gunicorn.conf.py`` (gunicorn's default config file)
    names dwebsocket's hooks: without them a stop or reload cuts open WebSockets with
    1006 instead of 1001. A command line elsewhere (a Procfile, a unit file) cannot be
    seen from here: silence the check then (``SILENCED_SYSTEM_CHECKS``)."""
    import importlib.util
    import os
    from pathlib import Path

    if importlib.util.find_spec("gunicorn") is None:
        return []
    if _HOOKS in os.environ.get("GUNICORN_CMD_ARGS", ""):
        return []
    config = Path("gunicorn.conf.py")
    if config.is_file() and _HOOKS in config.read_text(errors="replace"):
        return []
    return [
        checks.Warning(
            "gunicorn is installed, and neither GUNICORN_CMD_ARGS nor gunicorn.conf.py "
            "names dwebsocket's hooks: a stop or reload of gunicorn would cut open "
            "WebSockets (1006) instead of closing them with 1001.",
            hint=f"Start gunicorn with -c python:{_HOOKS}, or import it from your "
            'gunicorn.conf.py; if you already do elsewhere, add "dwebsocket.W012" to '
            "SILENCED_SYSTEM_CHECKS.",
            id="dwebsocket.W012",
        )
    ]


def _is(view: Any, target: Any) -> bool:
    """Whether ``view`` is ``target``, or wraps it (:func:`layers`)."""
    return any(layer is target for layer in layers(view))


def _has_process_view(path: str) -> bool:
    from django.utils.module_loading import import_string

    try:
        return hasattr(import_string(path), "process_view")
    except ImportError:  # Django reports it when it loads the middleware
        return False


register(Tags.compatibility)(check_wsgi_wrapper)
