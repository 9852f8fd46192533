"""Secret keys: which keys hold secrets, and where keys sit inside text (SPEC §7).

Pure: no I/O. :class:`SecretKeys` tells whether the values under a key are
redacted; :func:`assignment_keys`, :func:`line_keys` and :func:`quoted_keys`
find the keys of ``key=value``, ``key: value`` and ``"key": value`` pairs in
a string, for :mod:`streamapp.redact` and :mod:`streamapp.holdback`.

Case never matters, and keys themselves are kept as they are:

1. *Substrings.* With every character that is not a letter or a digit
   removed (``X-Api-Key`` → ``xapikey``), the key contains ``password``,
   ``passwd``, ``passphrase``, ``pwd``, ``secret``, ``apikey``,
   ``authorization``, ``cookie``, ``privatekey`` or ``credential`` — or one
   of the extra patterns (``STREAMAPP_REDACT_KEYS``). Extras are literal
   substrings, never regexes, normalized the same way: ``session_id`` matches ``sessionId``,
   ``X-Session-ID`` and ``old_session_id`` (and ``pin`` would match
   ``shipping``: choose extras with care).
2. *Words.* The key is cut into words at every character that is not a
   letter or a digit and at camelCase boundaries (``X-Auth-Token`` → x auth
   token, ``tokenValue`` → token value, ``CSRFToken`` → csrf token).
   A word that is ``token`` or ends in ``token`` (``csrftoken``), or is
   ``session`` (``session_id``, ``X-Session-Id``), makes the key secret,
   unless the next word counts them (count, counts, usage, limit, limits,
   budget). ``tokens`` and ``sessions`` are other words, so LLM usage data —
   ``prompt_tokens``, ``max_tokens``, ``tokens_used``, ``promptTokenCount``,
   ``token_usage`` — survives, and a list under ``refresh_tokens`` is only
   scanned as strings. ``pass`` makes the key secret when it is the last
   word (``pass``, ``db_pass``, ``smtpPass``): ``pass_rate``,
   ``passThrough``, ``passed``, ``bypass`` and ``passage`` are no secrets.

A key that is not a string (a Python producer's ``{1: ...}``) is never secret.
"""

from __future__ import annotations

import functools
import re
import typing as t
from collections.abc import Iterable
from collections.abc import Iterator

_SECRET_SUBSTRINGS = (
    "password",
    "passwd",
    "passphrase",
    "pwd",
    "secret",
    "apikey",
    "authorization",
    "cookie",
    "privatekey",
    "credential",
)
_COUNTING_WORDS = frozenset({"count", "counts", "usage", "limit", "limits", "budget"})
_EXCEPTION_SUFFIXES = ("error", "exception", "warning")

_NOT_ALNUM = re.compile(r"[\W_]+")
_WORDS = re.compile(r"[A-Z]+(?![a-z])|[A-Z]?[a-z]+|[0-9]+")
_KEY_CHARS = re.compile(r"[\w.-]+")
_MAX_KEY = 64
_QUOTED_KEY = re.compile(rf"(?P<quote>[\"'])(?P<key>[^\"'\s\\]{{1,{_MAX_KEY}}})(?P=quote)\s*:\s*")
_COLON_SPACE = re.compile(r":[ \t]")


def normalize(key: str) -> str:
    """``key`` with every character that is not a letter or a digit removed, lower-cased."""
    return _NOT_ALNUM.sub("", key).lower()


def names_an_exception(key: str) -> bool:
    """Whether ``key`` ends in Error, Exception or Warning: "NoCredentialsError: ..." is no pair."""
    return normalize(key).endswith(_EXCEPTION_SUFFIXES)


def _has_secret_word(key: str) -> bool:
    words = [w.lower() for w in _WORDS.findall(key)]
    for i, word in enumerate(words):
        if (word.endswith("token") or word == "session") and (
            i + 1 == len(words) or words[i + 1] not in _COUNTING_WORDS
        ):
            return True
    return bool(words) and words[-1] == "pass"


class SecretKeys:
    """Tells whether a key is secret by the rules in the module docstring; call it with the key.

    ``extra_keys`` are more key patterns (``Settings.redact_keys``), matched
    as case-insensitive literal substrings of the normalized key.

    :raises ValueError: for an extra pattern without a letter or digit (it
        would match every key).
    """

    def __init__(self, extra_keys: Iterable[str] = ()) -> None:
        extras: list[str] = []
        for pattern in extra_keys:
            normalized = normalize(pattern)
            if not normalized:
                raise ValueError(f"redaction key pattern {pattern!r} has no letter or digit")
            extras.append(normalized)
        self.extra_keys = tuple(extras)
        substrings = sorted({*_SECRET_SUBSTRINGS, *extras})
        self._substrings = re.compile("|".join(re.escape(s) for s in substrings))
        # Events repeat the same few keys; a bounded per-instance cache makes
        # the check a dict lookup without letting odd keys grow memory.
        self._cached = functools.lru_cache(maxsize=4096)(self._classify)

    def _classify(self, key: str) -> bool:
        return self._substrings.search(normalize(key)) is not None or _has_secret_word(key)

    def __call__(self, key: str) -> bool:
        return self._cached(key)


class Key(t.NamedTuple):
    """A key found in text, and where its value starts."""

    start: int
    value_start: int
    key: str
    #: the quote a bare value gets: the key's in JSON text (so it stays JSON), none after ``=``
    quote: str


def assignment_keys(text: str) -> Iterator[Key]:
    """The keys of ``key=value``, ``key = value``, ``key == value`` and ``key => value`` pairs."""
    # Anchored on each "=" and read backwards: a regex for "key=" would try
    # every word start of the text, five times slower on prose.
    equals = text.find("=")
    while equals != -1:
        key_end = equals
        while key_end > 0 and text[key_end - 1] in " \t":  # `password = "x"`
            key_end -= 1
        reversed_key = _KEY_CHARS.match(text[max(0, key_end - _MAX_KEY) : key_end][::-1])
        if reversed_key is not None:
            value = equals + 1
            while value < len(text) and text[value] in "=> \t":  # `==` and `=>` are one operator
                value += 1
            yield Key(key_end - reversed_key.end(), value, reversed_key[0][::-1], "")
        equals = text.find("=", equals + 1)


def line_keys(text: str) -> Iterator[Key]:
    """The keys of unquoted ``key: value`` pairs (a colon, then a space or tab)."""
    # Anchored on each ": " and read backwards, as for "=".
    for separator in _COLON_SPACE.finditer(text):
        colon = separator.start()
        reversed_key = _KEY_CHARS.match(text[max(0, colon - _MAX_KEY) : colon][::-1])
        if reversed_key is not None:
            start = colon - reversed_key.end()
            before = text[start - 1 : start] if start else ""
            yield Key(start, colon + 1, reversed_key[0][::-1], before if before in ("'", '"') else "")


def quoted_keys(text: str) -> Iterator[Key]:
    """The keys of ``"key": value`` pairs (JSON, a Python repr)."""
    for key in _QUOTED_KEY.finditer(text):
        yield Key(key.start(), key.end(), key["key"], key["quote"])
