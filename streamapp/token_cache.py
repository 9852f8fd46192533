"""A worker's short-lived memory of the API tokens it has checked (issue 10).

Checking a bearer token costs a database round trip on every request; at
hundreds of appends a second it was an eighth of a worker's time. A token
checked once is remembered for ``ttl_s`` seconds, keyed by its SHA-256, never
by the token itself.

Revocation must still bite at once (SPEC §7): revoking a token or disabling a
user sends a notification on :data:`accounts.AUTH_CHANNEL` in the same
transaction, and every worker's hub, on every host, drops what it remembers
for that token or user when it arrives. The hub forgets everything whenever its
listener (re)connects, since notifications sent while it was away are lost,
and :meth:`usable` keeps the cache off while no listener is connected. The
TTL only bounds what a listener that died unnoticed could leave behind.
"""

from __future__ import annotations

import collections
import hashlib
import time
from collections.abc import Callable

from .accounts import User

Clock = Callable[[], float]


class TokenCache:
    """Token hash → the user it authenticated, for ``ttl_s`` seconds, at most ``size`` entries."""

    def __init__(self, ttl_s: float, size: int = 10_000, clock: Clock = time.monotonic) -> None:
        self.ttl_s = ttl_s
        self.size = size
        self.clock = clock
        self._entries: collections.OrderedDict[bytes, tuple[float, User]] = collections.OrderedDict()
        #: Moves on every invalidation: a lookup that raced one must not be remembered.
        self.generation = 0

    @staticmethod
    def _key(token: str) -> bytes:
        return hashlib.sha256(token.encode()).digest()

    def get(self, token: str) -> User | None:
        """The user this token authenticated within the TTL, or ``None`` (ask the database)."""
        key = self._key(token)
        entry = self._entries.get(key)
        if entry is None:
            return None
        if self.clock() >= entry[0]:
            del self._entries[key]
            return None
        return entry[1]

    def put(self, token: str, user: User) -> None:
        key = self._key(token)
        self._entries[key] = (self.clock() + self.ttl_s, user)
        self._entries.move_to_end(key)
        while len(self._entries) > self.size:
            self._entries.popitem(last=False)

    def invalidate(self, change: str | None) -> None:
        """Forget ``token:<prefix>``'s or ``user:<id>``'s entries; everything for ``None``."""
        self.generation += 1
        if change is None:
            self._entries.clear()
            return
        what, _, key = change.partition(":")
        doomed = [
            k
            for k, (_, user) in self._entries.items()
            if (what == "token" and user.token_prefix == key) or (what == "user" and str(user.id) == key)
        ]
        for k in doomed:
            del self._entries[k]

    def __len__(self) -> int:
        return len(self._entries)


def remember(cache: TokenCache | None, usable: bool, token: str, lookup: Callable[[], User | None]) -> User | None:
    """The user of ``token``: from the cache when it may be trusted, else from ``lookup()``."""
    if cache is None or not usable:
        return lookup()
    user = cache.get(token)
    if user is None:
        generation = cache.generation
        user = lookup()
        # A revocation that arrived during the lookup may be about this very token.
        if user is not None and cache.generation == generation:
            cache.put(token, user)
    return user
