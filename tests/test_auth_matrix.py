"""The authorization matrix's own check, in process: its tables have a row for every API route of
the app and a status for every caller (SPEC §2, §7; issue 6). The matrix runs against a live
gunicorn in tests/live/test_auth_matrix.py."""

from __future__ import annotations

from tests.live.test_auth_matrix import CALLERS
from tests.live.test_auth_matrix import CELLS
from tests.live.test_auth_matrix import EXPECTED
from tests.live.test_auth_matrix import KIND_EXPECTED
from tests.live.test_auth_matrix import KINDS
from tests.live.test_auth_matrix import ROUTES


def test_the_tables_cover_every_endpoint_and_caller(app):
    assert all(len(statuses) == len(CALLERS) for statuses in (*KIND_EXPECTED.values(), *EXPECTED.values()))
    assert len(CELLS) == (len(KIND_EXPECTED) * len(KINDS) + len(EXPECTED)) * len(CALLERS)
    assert set(ROUTES) == set(KIND_EXPECTED) | set(EXPECTED)
    # Every API route of the app has a row: a new endpoint cannot slip past the matrix.
    prefix = app.extensions["streamapp"].url_prefix
    rules = {
        (method, rule.rule.removeprefix(prefix))
        for rule in app.url_map.iter_rules()
        if rule.rule.startswith(prefix + "/")
        for method in rule.methods - {"HEAD", "OPTIONS"}
    }
    assert rules == set(ROUTES.values())
