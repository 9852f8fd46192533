"""Cursor tokens of multiplexed streams (SPEC §5.6): every position, bound to one list, checked."""

from __future__ import annotations

import re
import secrets

import pytest

from streamapp.cursor import MAX_TOKEN
from streamapp.cursor import CursorInvalid
from streamapp.cursor import Cursors
from streamapp.cursor import Positions
from streamapp.cursor import canonical
from streamapp.cursor import list_digest

UNRESERVED = re.compile(r"[A-Za-z0-9._~-]+")
ENTRIES = canonical(["workflows/a", "agents/b", "tasks/c"])


@pytest.fixture
def cursors() -> Cursors:
    return Cursors("k" * 32)


@pytest.mark.parametrize("positions", [[0, 0, 0], [1, 127, 128], [2**31, 2**31 - 1, 5], [2**63 - 1, 0, 2**40]])
def test_a_token_gives_back_every_position(cursors, positions):
    token = cursors.token(ENTRIES, positions)
    assert UNRESERVED.fullmatch(token)
    assert cursors.positions(token, ENTRIES) == positions


def test_a_hundred_ids_of_64_characters_at_2_31_fit_in_1024_characters(cursors):
    entries = canonical([f"workflows/{secrets.token_hex(32)}" for _ in range(100)])
    token = cursors.token(entries, [2**31] * 100)
    assert len(token) <= MAX_TOKEN and UNRESERVED.fullmatch(token)
    assert cursors.positions(token, entries) == [2**31] * 100


def test_the_list_is_canonical_whatever_order_it_came_in():
    assert canonical(["workflows/b", "agents/z", "workflows/a"]) == ("agents/z", "workflows/a", "workflows/b")
    assert list_digest(canonical(["workflows/b", "workflows/a"])) == list_digest(
        canonical(["workflows/a", "workflows/b"])
    )
    assert list_digest(("workflows/a",)) != list_digest(("workflows/a", "workflows/b"))


def test_a_token_of_another_list_is_refused(cursors):
    token = cursors.token(ENTRIES, [1, 2, 3])
    for other in (ENTRIES[:2], canonical([*ENTRIES[:2], "tasks/d"]), (*ENTRIES, "workflows/z")):
        with pytest.raises(CursorInvalid, match="this list"):
            cursors.positions(token, other)


def test_a_token_of_another_server_is_refused(cursors):
    token = Cursors("another key, just as long").token(ENTRIES, [1, 2, 3])
    with pytest.raises(CursorInvalid):
        cursors.positions(token, ENTRIES)


def test_every_corruption_of_a_token_is_refused(cursors):
    token = cursors.token(ENTRIES, [5, 6, 7])
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    for n, char in enumerate(token):
        changed = token[:n] + (alphabet[(alphabet.index(char) + 1) % 64] if char != "." else "_") + token[n + 1 :]
        with pytest.raises(CursorInvalid):
            cursors.positions(changed, ENTRIES)


@pytest.mark.parametrize("token", ["", "12", ".", "abc.", ".abc", "é.x", "a" * (MAX_TOKEN + 1), "a.b.c"])
def test_malformed_tokens_are_refused(cursors, token):
    with pytest.raises(CursorInvalid):
        cursors.positions(token, ENTRIES)


def test_a_signed_body_that_is_no_token_is_refused(cursors):
    # Correctly signed bytes that are not positions: the version, the count and the varints are checked.
    listed = cursors.for_list(ENTRIES)
    for body in (b"", b"AQ", b"Ag", b"AYA", b"AQAB", b"AYCAgICAgICAgIAB"):
        token = (body + b"." + listed._signature(body)).decode()
        with pytest.raises(CursorInvalid):
            listed.positions(token)


def test_a_server_without_a_secret_key_makes_no_tokens():
    with pytest.raises(ValueError, match="secret key"):
        Cursors("")


def test_a_streams_positions_make_the_token_of_their_values_after_every_move(cursors):
    listed = cursors.for_list(ENTRIES)
    positions = Positions(listed, [0, 5, 2**31])
    for index, position in ((0, 1), (1, 200), (2, 3), (0, 2**40), (1, 200)):
        positions.move(index, position)
        assert positions.token().decode() == listed.token(list(positions))
        assert listed.positions(positions.token().decode()) == list(positions)
    assert list(positions) == [2**40, 200, 3] and positions[1] == 200
