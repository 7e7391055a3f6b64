"""The browser client's static files under ``collectstatic`` with hashed names
(``ManifestStaticFilesStorage``): ``dwebsocket.module.js`` imports ``./dwebsocket.js``, which
Django rewrites to the hashed name only where JS module imports are enabled
(docs/recovery.rst says to)."""

from __future__ import annotations

import re
from pathlib import Path

from django.conf import settings
from django.contrib.staticfiles.storage import ManifestStaticFilesStorage
from django.core.management import call_command
from django.test import override_settings


class ModuleImports(ManifestStaticFilesStorage):
    support_js_module_import_aggregation = True


def collected(tmp_path: Path, storage: str) -> str:
    """The hashed ``dwebsocket.module.js`` that ``collectstatic`` wrote with ``storage``."""
    with override_settings(
        INSTALLED_APPS=[*settings.INSTALLED_APPS, "django.contrib.staticfiles"],
        STATIC_ROOT=str(tmp_path),
        STATIC_URL="/static/",
        STORAGES={**settings.STORAGES, "staticfiles": {"BACKEND": storage}},
    ):
        call_command("collectstatic", interactive=False, verbosity=0)
    (module,) = (tmp_path / "dwebsocket").glob("dwebsocket.module.*.js")
    return module.read_text()


def test_module_imports_the_hashed_client_where_django_rewrites_module_imports(
    tmp_path: Path,
) -> None:
    module = collected(tmp_path, f"{__name__}.ModuleImports")
    (name,) = re.findall(r'^import ?"\./(dwebsocket\.[0-9a-f]{12}\.js)";$', module, re.M)
    assert (tmp_path / "dwebsocket" / name).is_file()


def test_module_imports_the_plain_name_by_default(tmp_path: Path) -> None:
    """Still served (collectstatic keeps the plain names), but cached under the plain name:
    hence the setting the docs ask for."""
    module = collected(tmp_path, "django.contrib.staticfiles.storage.ManifestStaticFilesStorage")
    assert re.search(r'^import "\./dwebsocket\.js";$', module, re.M)
