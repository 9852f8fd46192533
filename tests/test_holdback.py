"""holdback: the tail of piece-by-piece text that more text could still turn into a secret (SPEC §7).

test_redact.py holds Redactor.hold_from to the rules with the built-in keys; these tests show that
hold_from takes its idea of a secret key from the caller, and keep the MAX_HOLD bound.
"""

from __future__ import annotations

from streamapp.holdback import MAX_HOLD
from streamapp.holdback import hold_from
from streamapp.redact import MAX_HOLD as REDACT_MAX_HOLD


def _never(key: str) -> bool:
    return False


def _tenant(key: str) -> bool:
    return key.lower() == "tenant"


def test_a_key_is_held_only_when_the_callers_rule_calls_it_secret():
    text = "config tenant: "
    assert hold_from(text, _never) == len(text)
    assert text[hold_from(text, _tenant) :] == "tenant: "


def test_an_open_quoted_value_is_held_with_its_key():
    text = 'x = 1, "tenant": "acme and'
    assert text[hold_from(text, _tenant) :] == '"tenant": "acme and'
    assert text[hold_from(text, _never) :] == "and"


def test_scheme_words_and_private_keys_need_no_secret_key():
    assert "send Bearer "[hold_from("send Bearer ", _never) :] == "Bearer "
    pem = "-----BEGIN EC PRIVATE KEY-----\nMHc\n"
    assert hold_from("conf\n" + pem, _never) == len("conf\n")


def test_nothing_longer_than_max_hold_is_held():
    assert REDACT_MAX_HOLD == MAX_HOLD  # chunks.py reads it from redact
    assert hold_from("x" * (MAX_HOLD + 1), _tenant) == MAX_HOLD + 1
    assert hold_from("x" * MAX_HOLD, _tenant) == 0
