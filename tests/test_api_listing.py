"""Listing executions over HTTP (SPEC §2): newest first, owners, pages and cursors, through the
Flask test client and a real PostgreSQL."""

from __future__ import annotations

import base64

import pytest

from tests.test_api import DOCUMENT_FIELDS
from tests.test_api import _create
from tests.test_api import _error
from tests.test_api import _url

# -- list -----------------------------------------------------------------------------------------


def _list(client, account, segment: str = "workflows", **params):
    return client.get(_url(segment), query_string=params, headers=account.headers)


def test_list_is_newest_first(client, auth):
    owner = auth.user()
    ids = [_create(client, owner)["exec_id"] for _ in range(3)]
    r = _list(client, owner)
    assert r.status_code == 200
    body = r.get_json()
    assert [d["exec_id"] for d in body["items"]] == ids[::-1]
    assert body["next_cursor"] is None
    assert all(set(d) == DOCUMENT_FIELDS for d in body["items"])


def test_list_shows_only_that_kind(client, auth):
    owner = auth.user()
    agent = _create(client, owner, "agents")["exec_id"]
    _create(client, owner, "tasks")
    assert [d["exec_id"] for d in _list(client, owner, "agents").get_json()["items"]] == [agent]


def test_user_lists_only_their_own(client, auth):
    mine, theirs = auth.user(), auth.user()
    _create(client, theirs)
    own = _create(client, mine)["exec_id"]
    assert [d["exec_id"] for d in _list(client, mine).get_json()["items"]] == [own]


def test_admin_lists_everyones(client, auth):
    first, second, admin = auth.user(), auth.user(), auth.user(admin=True)
    a = _create(client, first)["exec_id"]
    b = _create(client, second)["exec_id"]
    items = _list(client, admin, limit=2).get_json()["items"]
    assert [d["exec_id"] for d in items] == [b, a]


def test_list_pages_until_next_cursor_is_null(client, auth):
    owner = auth.user()
    ids = [_create(client, owner)["exec_id"] for _ in range(5)][::-1]
    seen, cursor, pages = [], None, 0
    while True:
        params = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        body = _list(client, owner, **params).get_json()
        seen += [d["exec_id"] for d in body["items"]]
        pages += 1
        cursor = body["next_cursor"]
        if cursor is None:
            break
    assert (seen, pages) == (ids, 3)


def test_full_last_page_has_null_cursor(client, auth):
    owner = auth.user()
    for _ in range(2):
        _create(client, owner)
    body = _list(client, owner, limit=2).get_json()
    assert len(body["items"]) == 2 and body["next_cursor"] is None


def test_list_default_limit_is_20(client, auth):
    owner = auth.user()
    for _ in range(21):
        _create(client, owner, "tasks")
    body = _list(client, owner, "tasks").get_json()
    assert len(body["items"]) == 20 and body["next_cursor"] is not None


@pytest.mark.parametrize("limit", [1, 100])
def test_list_limit_bounds_are_accepted(client, account, limit):
    assert _list(client, account, limit=limit).status_code == 200


def _cursor(raw: str) -> str:
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


@pytest.mark.parametrize(
    "params, fragment",
    [
        ({"limit": "0"}, "limit"),
        ({"limit": "101"}, "limit"),
        ({"limit": "-1"}, "limit"),
        ({"limit": "ten"}, "limit"),
        ({"limit": "1.5"}, "limit"),
        ({"cursor": "!!!"}, "cursor"),
        ({"cursor": "abc"}, "cursor"),
        ({"cursor": "x" * 201}, "cursor"),
        ({"cursor": _cursor("yesterday|abc")}, "cursor"),
        ({"cursor": _cursor("2026-01-01T00:00:00+00:00")}, "cursor"),
        ({"cursor": _cursor("2026-W01-1|abc")}, "cursor"),
        ({"cursor": _cursor("2026-01-01T00:00:00|abc")}, "cursor"),
        ({"cursor": _cursor("2026-01-01T00:00:00+00:00|a\u0000b")}, "cursor"),
        ({"cursor": _cursor("2026-01-01T00:00:00+00:00|a b")}, "cursor"),
        ({"page": "2"}, "page"),
    ],
)
def test_bad_list_parameters_are_400(client, account, params, fragment):
    assert fragment in _error(_list(client, account, **params), 400, "bad_request")


def test_anonymous_cannot_list(client):
    _error(client.get(_url("workflows")), 401, "not_authenticated")
