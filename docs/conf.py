"""Sphinx configuration: built with warnings as errors by the test command."""

from __future__ import annotations

import os
import sys

import django

sys.path.insert(0, os.path.abspath(".."))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")
django.setup()

project = "dwebsocket"
author = "dwebsocket developers"
copyright = "2026, dwebsocket developers"
# No intersphinx: the build must not need the network (it fails offline, and -W makes
# that an error).
extensions = ["sphinx.ext.autodoc", "sphinx.ext.viewcode"]
autodoc_member_order = "bysource"
autodoc_typehints = "description"
exclude_patterns = ["_build"]  # internals/*.md are notes in the repository, not pages
html_theme = "alabaster"
nitpicky = False
