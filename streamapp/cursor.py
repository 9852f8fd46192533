"""Cursor tokens of multiplexed streams: every listed execution's position in one ``id:`` (SPEC §5.6).

A token is ``<positions>.<signature>``: the positions as unsigned LEB128
varints after a version byte, base64url without padding, then an HMAC of
them and of the list they belong to, made and checked by itsdangerous. The
list itself is not in the token (a request line carries it already); a token
read against another list fails its check, as does a corrupted or forged one.
Every character is in ``A-Z a-z 0-9 - _ .``: URL-safe unreserved, no
padding. A hundred positions below 2^31 take at most 712 characters.

A list is canonical, sorted, so a client that lists the same executions in
another order resumes with the same token. Pure: no I/O, no Flask.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Sequence

from itsdangerous import Signer

SALT = "streamapp.stream-cursor"
VERSION = 1
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
    """Makes and reads the cursor tokens of one server, signed with its secret key."""

    def __init__(self, secret_key: str | bytes) -> None:
        if not secret_key:
            raise ValueError("cursor tokens need a secret key")
        self._signer = Signer(secret_key, salt=SALT, digest_method=hashlib.sha256)

    def token(self, entries: Sequence[str], positions: Sequence[int]) -> str:
        """The token of ``positions``, one per entry of the canonical list ``entries``."""
        body = base64.urlsafe_b64encode(_pack(positions)).rstrip(b"=")
        return (body + b"." + self._signer.get_signature(_signed(entries, body))).decode()

    def positions(self, token: str, entries: Sequence[str]) -> list[int]:
        """The positions a token holds for the canonical list ``entries``.

        :raises CursorInvalid: malformed, corrupted, forged, or made for another list.
        """
        if len(token) > MAX_TOKEN or not token.isascii():
            raise CursorInvalid("is not a cursor token of this stream")
        body, dot, signature = token.encode().partition(b".")
        raw = _decoded(body)
        # Canonical base64 only: a changed character that decodes to the same bytes is still a change.
        if raw is None or _decoded(signature) is None:
            raise CursorInvalid("is not a cursor token of this stream")
        if not dot or not self._signer.verify_signature(_signed(entries, body), signature):
            raise CursorInvalid("is not a cursor token of this list of executions")
        positions = _unpack(raw)
        if len(positions) != len(entries):
            raise CursorInvalid("is not a cursor token of this list of executions")
        return positions


def _decoded(text: bytes) -> bytes | None:
    """Unpadded base64url ``text`` decoded, if it is exactly how those bytes encode; ``None`` otherwise."""
    try:
        raw = base64.urlsafe_b64decode(text + b"=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        return None
    return raw if base64.urlsafe_b64encode(raw).rstrip(b"=") == text else None


def _signed(entries: Sequence[str], body: bytes) -> bytes:
    return "\n".join(entries).encode() + b"\0" + body


def _pack(positions: Sequence[int]) -> bytes:
    out = bytearray((VERSION,))
    for position in positions:
        while position >= 0x80:
            out.append(position & 0x7F | 0x80)
            position >>= 7
        out.append(position)
    return bytes(out)


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
