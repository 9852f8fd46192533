"""Cursor tokens of multiplexed streams: every listed execution's position in one ``id:`` (SPEC §5.6).

A token is ``<positions>.<signature>``: the positions as unsigned LEB128
varints after a version byte, base64url without padding, then an HMAC-SHA256
of them and of the list they belong to, under a key itsdangerous derives from
the secret key for this use alone. The list itself is not in the token (a
request line carries it already); a token read against another list fails its
check, as does a corrupted or forged one.
Every character is in ``A-Z a-z 0-9 - _ .``: URL-safe unreserved, no
padding. A hundred positions below 2^31 take at most 712 characters.

A list is canonical, sorted, so a client that lists the same executions in
another order resumes with the same token. Pure: no I/O, no Flask.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import typing as t
from collections.abc import Sequence

from itsdangerous import Signer

SALT = "streamapp.stream-cursor"
VERSION = 1
_VERSION = bytes((VERSION,))
#: The longest token accepted (SPEC §5.6).
MAX_TOKEN = 1024


class CursorInvalid(ValueError):
    """Not a token we made for this list of executions."""


def canonical(entries: Sequence[str]) -> tuple[str, ...]:
    """A list of ``segment/exec_id`` entries in the order tokens and tickets bind it: sorted."""
    return tuple(sorted(entries))


def list_digest(entries: Sequence[str]) -> str:
    """A short, fixed-length name of a canonical list, for a ticket to be bound to (SPEC §5.6, §7)."""
    digest = hashlib.sha256("\n".join(entries).encode()).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


class Cursors:
    """Makes and reads the cursor tokens of one server, signed with a key derived from its secret key."""

    def __init__(self, secret_key: str | bytes) -> None:
        if not secret_key:
            raise ValueError("cursor tokens need a secret key")
        # itsdangerous derives a key of this salt's own: no other value signed with the secret
        # key can pass as a token, nor a token as another value.
        self._key = Signer(secret_key, salt=SALT, digest_method=hashlib.sha256).derive_key()

    def for_list(self, entries: Sequence[str]) -> ListCursor:
        """The tokens of one canonical list of ``segment/exec_id`` entries."""
        return ListCursor(self._key, entries)

    def token(self, entries: Sequence[str], positions: Sequence[int]) -> str:
        """The token of ``positions``, one per entry of the canonical list ``entries``."""
        return self.for_list(entries).token(positions)

    def positions(self, token: str, entries: Sequence[str]) -> list[int]:
        """The positions a token holds for the canonical list ``entries``.

        :raises CursorInvalid: malformed, corrupted, forged, or made for another list.
        """
        return self.for_list(entries).positions(token)


class ListCursor:
    """The tokens of one list of executions. The list is hashed into the MAC once, not per token:
    a stream writes one token per durable frame (a hundred entries made it 10 µs a token)."""

    def __init__(self, key: bytes, entries: Sequence[str]) -> None:
        self.entries = tuple(entries)
        self._listed = hmac.new(key, "\n".join(self.entries).encode() + b"\0", hashlib.sha256)

    def _signature(self, body: bytes) -> bytes:
        mac = self._listed.copy()
        mac.update(body)
        return base64.urlsafe_b64encode(mac.digest()).rstrip(b"=")

    def token(self, positions: Sequence[int]) -> str:
        """The token of ``positions``, one per entry of the list."""
        body = base64.urlsafe_b64encode(_pack(positions)).rstrip(b"=")
        return (body + b"." + self._signature(body)).decode()

    def positions(self, token: str) -> list[int]:
        """The positions a token holds for this list.

        :raises CursorInvalid: malformed, corrupted, forged, or made for another list.
        """
        if len(token) > MAX_TOKEN or not token.isascii():
            raise CursorInvalid("is not a cursor token of this stream")
        body, dot, signature = token.encode().partition(b".")
        raw = _decoded(body)
        # Canonical base64 only: a changed character that decodes to the same bytes is still a change.
        if not dot or raw is None or _decoded(signature) is None:
            raise CursorInvalid("is not a cursor token of this stream")
        if not hmac.compare_digest(signature, self._signature(body)):
            raise CursorInvalid("is not a cursor token of this list of executions")
        positions = _unpack(raw)
        if len(positions) != len(self.entries):
            raise CursorInvalid("is not a cursor token of this list of executions")
        return positions


class Positions:
    """A stream's position in each execution of its list, and their token after each move.

    Each position's varint is kept encoded: a move re-encodes that one, and a token joins them
    (a stream writes one token per durable frame, each of a hundred positions).
    """

    def __init__(self, cursor: ListCursor, positions: Sequence[int]) -> None:
        self.cursor = cursor
        self._values = list(positions)
        self._varints = [_varint(position) for position in positions]

    def __getitem__(self, index: int) -> int:
        return self._values[index]

    def __iter__(self) -> t.Iterator[int]:
        return iter(self._values)

    def move(self, index: int, position: int) -> None:
        if position != self._values[index]:
            self._values[index] = position
            self._varints[index] = _varint(position)

    def token(self) -> bytes:
        body = base64.urlsafe_b64encode(_VERSION + b"".join(self._varints)).rstrip(b"=")
        return body + b"." + self.cursor._signature(body)


def _decoded(text: bytes) -> bytes | None:
    """Unpadded base64url ``text`` decoded, if it is exactly how those bytes encode; ``None`` otherwise."""
    try:
        raw = base64.urlsafe_b64decode(text + b"=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        return None
    return raw if base64.urlsafe_b64encode(raw).rstrip(b"=") == text else None


def _varint(position: int) -> bytes:
    out = bytearray()
    while position >= 0x80:
        out.append(position & 0x7F | 0x80)
        position >>= 7
    out.append(position)
    return bytes(out)


def _pack(positions: Sequence[int]) -> bytes:
    return _VERSION + b"".join(map(_varint, positions))


def _unpack(raw: bytes) -> list[int]:
    if not raw or raw[0] != VERSION:
        raise CursorInvalid("is not a cursor token of this stream")
    positions, value, shift = [], 0, 0
    for byte in raw[1:]:
        value |= (byte & 0x7F) << shift
        shift += 7
        if shift > 63:
            raise CursorInvalid("is not a cursor token of this stream")
        if not byte & 0x80:
            positions.append(value)
            value = shift = 0
    if shift:
        raise CursorInvalid("is not a cursor token of this stream")
    return positions
