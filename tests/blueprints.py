"""Workaround for a bug in ``extension.py``, shared by the modules that build apps.

``StreamApp.init_app`` calls ``register_error_handler`` on the module-level
blueprints every time it runs, and Flask 3 refuses setup calls on a blueprint
that was already registered, so a second ``create_app`` in one process fails.
Remove this once ``init_app`` sets those handlers up only once.
"""

from __future__ import annotations

import sys

import pytest
from flask import Blueprint


@pytest.fixture(autouse=True)
def reusable_blueprints() -> None:
    """Let every streamapp blueprint be set up again for the next app."""
    for name, module in list(sys.modules.items()):
        bp = getattr(module, "bp", None)
        if name.startswith("streamapp.") and isinstance(bp, Blueprint):
            bp._got_registered_once = False
