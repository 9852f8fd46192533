"""The worker's token cache: what it remembers, for how long, and what makes it forget (issue 10)."""

from __future__ import annotations

import dataclasses

import pytest

from streamapp.accounts import User
from streamapp.token_cache import TokenCache
from streamapp.token_cache import remember


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _user(user_id: int, prefix: str) -> User:
    user = User(id=user_id, email=f"u{user_id}@example.com", is_admin=False, disabled=False)
    return dataclasses.replace(user, token_prefix=prefix, scopes=frozenset({"read"}))


@pytest.fixture
def clock() -> Clock:
    return Clock()


def test_a_token_is_remembered_for_its_ttl_only(clock):
    cache = TokenCache(15, clock=clock)
    cache.put("sa_a_secret", _user(1, "a"))
    clock.now += 14.9
    assert cache.get("sa_a_secret") == _user(1, "a")
    clock.now += 0.1
    assert cache.get("sa_a_secret") is None and len(cache) == 0


def test_it_keeps_no_token_in_the_clear(clock):
    cache = TokenCache(15, clock=clock)
    cache.put("sa_a_secret", _user(1, "a"))
    assert all(b"sa_a_secret" not in key for key in cache._entries)


@pytest.mark.parametrize(
    "change, left",
    [("token:a", {"sa_b"}), ("user:1", {"sa_b"}), ("user:2", {"sa_a", "sa_b"}), ("token:zz", {"sa_a", "sa_b"})],
)
def test_invalidation_forgets_a_token_or_every_token_of_a_user(clock, change, left):
    cache = TokenCache(15, clock=clock)
    cache.put("sa_a", _user(1, "a"))
    cache.put("sa_b", _user(3, "b"))
    cache.invalidate(change)
    assert {token for token in ("sa_a", "sa_b") if cache.get(token)} == left


def test_none_forgets_everything(clock):
    cache = TokenCache(15, clock=clock)
    cache.put("sa_a", _user(1, "a"))
    cache.invalidate(None)
    assert len(cache) == 0


def test_the_oldest_entries_go_past_the_size(clock):
    cache = TokenCache(15, size=2, clock=clock)
    for n in range(3):
        cache.put(f"sa_{n}", _user(n, str(n)))
    assert [cache.get(f"sa_{n}") is not None for n in range(3)] == [False, True, True]


def test_remember_asks_the_database_once_while_trusted(clock):
    cache, calls = TokenCache(15, clock=clock), []

    def lookup():
        calls.append(1)
        return _user(1, "a")

    for _ in range(5):
        assert remember(cache, True, "sa_a", lookup) == _user(1, "a")
    assert len(calls) == 1


def test_remember_does_not_trust_the_cache_without_a_listener(clock):
    cache, calls = TokenCache(15, clock=clock), []
    cache.put("sa_a", _user(1, "a"))
    assert remember(cache, False, "sa_a", lambda: calls.append(1) or None) is None
    assert calls == [1]


def test_a_lookup_that_raced_a_revocation_is_not_remembered(clock):
    cache = TokenCache(15, clock=clock)

    def lookup_during_which_the_token_is_revoked():
        cache.invalidate("token:a")
        return _user(1, "a")  # read before the revocation committed

    remember(cache, True, "sa_a", lookup_during_which_the_token_is_revoked)
    assert cache.get("sa_a") is None


def test_unknown_tokens_are_not_remembered(clock):
    cache = TokenCache(15, clock=clock)
    assert remember(cache, True, "sa_nope", lambda: None) is None
    assert len(cache) == 0
