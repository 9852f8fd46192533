"""Bearer tokens remembered by each worker, forgotten on every worker when revoked (issue 10, SPEC §7).

The server runs two workers with a heartbeat, and so a cache lifetime, of 60 s:
a request refused within a few seconds of a revocation can only have been
refused because the revocation reached the worker's cache through the hub.
"""

from __future__ import annotations

import time
import typing as t

import psycopg2
import pytest
import requests

from streamapp import accounts
from tests.conftest import live_server

pytestmark = pytest.mark.live

ENV = {"STREAMAPP_HEARTBEAT_S": "60", "STREAMAPP_STREAM_LIFETIME_S": "600"}


@pytest.fixture(scope="module")
def slow_heartbeat(database: str, tmp_path_factory: pytest.TempPathFactory) -> t.Iterator[t.Any]:
    with live_server(database, tmp_path_factory.mktemp("token-cache"), ENV, workers=2) as live:
        yield live


def _commits(database: str) -> int:
    with psycopg2.connect(database) as conn, conn.cursor() as cur:
        cur.execute("SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()")
        count = t.cast(int, cur.fetchone()[0])
    conn.close()
    return count


def _catalog(live: t.Any, token: str) -> int:
    # The catalog needs the read scope and nothing else from the database.
    return requests.get(
        live.api("/events/catalog"), headers={"Authorization": f"Bearer {token}"}, timeout=10
    ).status_code


def _until_refused(live: t.Any, token: str, deadline_s: float) -> float:
    start = time.monotonic()
    while _catalog(live, token) != 401:
        assert time.monotonic() - start < deadline_s, "the revoked token is still accepted"
    return time.monotonic() - start


def test_repeated_requests_do_not_ask_the_database_each_time(slow_heartbeat, account, database):
    for _ in range(20):  # both workers have started their listeners and remember the token
        assert _catalog(slow_heartbeat, account.token) == 200
    before = _commits(database)
    for _ in range(100):
        assert _catalog(slow_heartbeat, account.token) == 200
    # Background loops commit a little; one token lookup per request would add 100.
    assert _commits(database) - before < 50


def test_a_revoked_token_is_refused_by_every_worker_long_before_the_cache_expires(slow_heartbeat, auth, account, db):
    token = auth.token(account, ["read"])
    for _ in range(20):
        assert _catalog(slow_heartbeat, token) == 200
    with db.transaction() as cur:
        accounts.revoke_token(cur, t.cast(str, accounts.token_prefix(token)))
    assert _until_refused(slow_heartbeat, token, deadline_s=10) < 10  # the cache would hold it 60 s
    assert {_catalog(slow_heartbeat, token) for _ in range(40)} == {401}


def test_a_disabled_user_is_refused_by_every_worker_at_once(slow_heartbeat, auth, db):
    user = auth.user()
    for _ in range(20):
        assert _catalog(slow_heartbeat, user.token) == 200
    with db.transaction() as cur:
        accounts.disable_user(cur, user.email)
    _until_refused(slow_heartbeat, user.token, deadline_s=10)
    assert {_catalog(slow_heartbeat, user.token) for _ in range(40)} == {401}
