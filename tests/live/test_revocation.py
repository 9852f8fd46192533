"""Across two gunicorn workers: revocation ends live streams, the per-user limit holds (issue 6)."""

from __future__ import annotations

import time

import pytest
import requests

from streamapp import accounts
from tests.conftest import live_server
from tests.sse import Stream

pytestmark = pytest.mark.live

STREAMS = 8  # enough that both workers hold some


def _open_streams(live, headers, exec_ids) -> list[Stream]:
    streams = []
    for exec_id in exec_ids:
        stream = Stream(live.api(f"/executions/workflows/{exec_id}/stream"), headers)
        assert stream.response.status_code == 200, stream.response.text
        stream.next_item()
        streams.append(stream)
    return streams


def _streams_on_both_workers(live, headers, producer, account) -> list[Stream]:
    """Open streams until both workers hold at least one (the kernel picks the worker)."""
    streams: list[Stream] = []
    while len(streams) < 40:
        streams += _open_streams(live, headers, _executions(producer, account, 2))
        if len(streams) >= STREAMS and live.workers_holding_streams() == 2:
            return streams
    raise AssertionError("the streams never spread over both workers")


@pytest.fixture
def two_workers(database, tmp_path):
    env = {"STREAMAPP_HEARTBEAT_S": "1", "STREAMAPP_MAX_STREAMS_PER_USER": "100"}
    with live_server(database, tmp_path, env, workers=2) as live:
        yield live


def _executions(producer, account, n: int) -> list[str]:
    return [producer.create_execution("workflow", "wf", account.user.get_id())["exec_id"] for _ in range(n)]


def test_revoked_token_ends_its_streams_on_every_worker(two_workers, auth, producer, db):
    account = auth.user()
    token = auth.token(account, ["read"])
    streams = _streams_on_both_workers(two_workers, auth.bearer(token), producer, account)
    bystander = _open_streams(two_workers, account.headers, _executions(producer, account, 1))[0]
    try:
        with db.transaction() as cur:
            accounts.revoke_token(cur, accounts.token_prefix(token))
        for stream in streams:
            stream.ends_within(3)  # one heartbeat (1 s) and the request in flight
        # The user's other token is untouched: its stream keeps beating.
        assert [bystander.next_item(3), bystander.next_item(3)] == ["connected", "ping"]
        again = requests.get(streams[0].response.url, headers=auth.bearer(token), timeout=5)
        assert again.status_code == 401
    finally:
        for stream in [*streams, bystander]:
            stream.close()


def test_disabled_user_loses_every_stream(two_workers, auth, producer, db):
    account = auth.user()
    streams = _streams_on_both_workers(two_workers, account.headers, producer, account)
    try:
        with db.transaction() as cur:
            accounts.disable_user(cur, account.email)
        for stream in streams:
            stream.ends_within(3)
    finally:
        for stream in streams:
            stream.close()


def _a_user_at_the_limit_on_both_workers(live, auth, producer, limit: int):
    """A new user with ``limit`` open streams held by both workers, and their execution ids.

    The kernel picks the worker for each connection: a fresh user per try, until one spreads.
    """
    for _ in range(20):
        account = auth.user()
        exec_ids = _executions(producer, account, limit)
        streams = _open_streams(live, account.headers, exec_ids)
        if live.workers_holding_streams() == 2:
            return account, exec_ids, streams
        for stream in streams:
            stream.close()
    raise AssertionError("the streams never spread over both workers")


def test_per_user_limit_counts_across_workers(database, tmp_path, auth, producer):
    env = {"STREAMAPP_HEARTBEAT_S": "1", "STREAMAPP_MAX_STREAMS_PER_USER": "3"}
    with live_server(database, tmp_path, env, workers=2) as live:
        account, exec_ids, streams = _a_user_at_the_limit_on_both_workers(live, auth, producer, 3)
        # Neither worker holds three of them: only a count across workers refuses the next.
        url = live.api(f"/executions/workflows/{exec_ids[0]}/stream")
        try:
            # New connections land on either worker; every one of them is refused.
            for _ in range(6):
                refused = requests.get(url, headers=account.headers, timeout=5)
                assert refused.status_code == 429, refused.text
                assert int(refused.headers["Retry-After"]) >= 1
                assert refused.json()["error"]["code"] == "too_many_streams"
            other = auth.user()
            other_exec = _executions(producer, other, 1)[0]
            with Stream(live.api(f"/executions/workflows/{other_exec}/stream"), other.headers) as s:
                assert s.response.status_code == 200  # the limit is per user
        finally:
            streams[0].close()
        # A closed stream gives its slot back (noticed at the next heartbeat write).
        end = time.monotonic() + 10
        while time.monotonic() < end:
            r = requests.get(url, headers=account.headers, timeout=5, stream=True)
            if r.status_code == 200:
                r.close()
                break
            time.sleep(0.2)
        else:
            raise AssertionError("slot not given back")
        for stream in streams[1:]:
            stream.close()
