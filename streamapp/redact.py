"""Redaction: secrets never leave the server (SPEC §7).

:meth:`Redactor.redact` returns a redacted deep copy of a JSON value (the
input is never changed); it runs on every appended event, before it is
stored. :meth:`Redactor.redact_text` does the same for one string (text
chunks, error messages). A redacted value keeps no part of the secret.

Secret keys
-----------
Which keys are secret is :mod:`streamapp.secret_keys`' business (substrings
such as ``password`` or ``apikey``, words such as ``token`` or ``session``,
and the extra patterns of ``STREAMAPP_REDACT_KEYS``).

Whatever is under a secret key — a string, number, bool, ``None``, object
or list — becomes ``"[REDACTED]"``. A key that is not a string (a Python
producer's ``{1: ...}``) is never secret.

Inside strings (values and list items, at any depth)
----------------------------------------------------
- the well-known credential formats of :mod:`streamapp.credentials` (cloud
  access keys, JWTs, vendor API keys) → ``[REDACTED]``, whole;
- our API tokens, ``sa_<12 hex>_<url-safe>`` → ``[REDACTED]``;
- URL passwords, ``scheme://user:pass@host`` → ``scheme://user:[REDACTED]@host``
  (the password runs to the last ``@`` before ``/ ? #``, a quote or
  whitespace);
- ``Bearer <credential>`` (any case) → ``Bearer [REDACTED]``, unless the
  word after it is one that prose puts there (token, tokens, auth,
  authentication, scheme, of): "send a Bearer token" reads as written;
- ``Basic <credential>`` (any case) → ``Basic [REDACTED]`` when the
  credential is base64-shaped (length a multiple of 4) and not a plain word,
  so "basic usage" and "Basic Auth" read as written;
- ``key=value`` (query strings, DSNs, ``--password=x``), ``key = "value"``
  (spaces around ``=``, ``==`` or ``=>``: code, config files) and
  ``"key": value`` (JSON or a Python repr, one level of quoting) whose key is
  secret by the rules above → the value becomes ``[REDACTED]``, its quotes
  kept; object and list values are left to the pairs inside them;
- unquoted ``key: value`` (HTTP headers, YAML, log lines: a colon right after
  the key, then a space or tab) whose key is secret → everything up to the
  end of the line becomes ``[REDACTED]`` (``Cookie: a=1; b=2`` →
  ``Cookie: [REDACTED]``). A line ends at CR, LF or an escaped ``\n`` /
  ``\r``; when a quote opens right before the key (``-H 'X-Api-Key: k'``) the
  value also ends at that quote. Under an ``authorization`` key a leading
  scheme word (Bearer, Basic, Digest, Negotiate, Token) is kept. A key that
  names an exception (ends in ``Error``, ``Exception`` or ``Warning``, as in
  ``NoCredentialsError: Unable to locate credentials``) is not a key;
- PEM private keys, ``-----BEGIN … PRIVATE KEY-----`` to its ``-----END …
  PRIVATE KEY-----`` line, become ``[REDACTED]`` whole (a block cut off
  before its END line, to the end of the text). Certificates and public keys
  are not secrets and stay.

Redaction is idempotent: the rules run again until they change nothing, so
redacting its own output changes nothing.

Text cut into pieces
--------------------
Each string is redacted on its own: a secret split over two strings (two
HTTP chunk requests) is not seen. Text written piece by piece
(``ChunkPublisher``) holds back its tail: :meth:`Redactor.hold_from`, whose
rules are in :mod:`streamapp.holdback`.
"""

from __future__ import annotations

import re
import typing as t
from collections.abc import Iterable
from collections.abc import Iterator

from . import credentials
from . import holdback
from .credentials import REDACTED as REDACTED
from .holdback import MAX_HOLD as MAX_HOLD
from .secret_keys import Key
from .secret_keys import SecretKeys
from .secret_keys import assignment_keys
from .secret_keys import line_keys
from .secret_keys import names_an_exception
from .secret_keys import normalize
from .secret_keys import quoted_keys

_BEARER_PROSE = frozenset({"token", "tokens", "auth", "authentication", "scheme", "of"})

# Every text rule needs one of these characters; most ids and enum values
# have none and skip all the work.
_TRIGGER = re.compile(r"[\s=:_]")
_API_TOKEN = re.compile(r"(?<![A-Za-z0-9])sa_[0-9a-f]{12}_[A-Za-z0-9_-]+")
_URL_PASSWORD = re.compile(r"(?P<head>\b[A-Za-z][A-Za-z0-9+.-]*://[^\s:/?#@\"'<>]*:)(?P<password>[^\s/?#\"'<>\\]+)@")
# The credential is neither a scheme word nor a key with its value after it (`Bearer password = x`).
_AUTH_SCHEME = re.compile(
    r"\b(?P<scheme>(?i:bearer|basic))(?P<space>[ \t]+)"
    r"(?P<credential>(?!(?i:bearer|basic)\b)[A-Za-z0-9._~+/=-]++)(?![ \t]*(?:=|:[ \t]))"
)
_BASE64 = re.compile(r"[A-Za-z0-9+/]+={0,2}")
_PLAIN_PIECE = r"(?:[a-z]+|[A-Z][a-z]*|[A-Z]+)"
_PLAIN_WORD = re.compile(rf"{_PLAIN_PIECE}(?:-{_PLAIN_PIECE})*")
_VALUE = re.compile(r"\"(?:[^\"\\]|\\.)*\"|'(?:[^'\\]|\\.)*'|[\"']?[^\s&;,\"'<>)\]}]+")
_PEM_PRIVATE_KEY = re.compile(
    r"-----BEGIN (?P<label>[A-Z0-9 ]*PRIVATE KEY(?: BLOCK)?)-----.*?(?:-----END (?P=label)-----|\Z)", re.S
)
# The value of an unquoted "key: value" pair: to the end of its line, an
# escaped \n or \r counting as one; inside quotes, also to the closing quote.
_LINE_VALUES = {
    "": re.compile(r"[ \t]*(?P<value>(?:[^\r\n\\]|\\(?![rn]))*)"),
    '"': re.compile(r'[ \t]*(?P<value>(?:[^\r\n\\"]|\\(?![rn"]))*)'),
    "'": re.compile(r"[ \t]*(?P<value>(?:[^\r\n\\']|\\(?![rn']))*)"),
}
_HEADER_SCHEME = re.compile(r"(?i:bearer|basic|digest|negotiate|token)[ \t]+")
_PASSES = 4


def _is_credential(scheme: str, credential: str) -> bool:
    if scheme.lower() == "bearer":
        return credential.lower() not in _BEARER_PROSE
    return (
        len(credential) % 4 == 0
        and _BASE64.fullmatch(credential) is not None
        and _PLAIN_WORD.fullmatch(credential) is None
    )


def _quote_of(value: str) -> str:
    if len(value) > 1 and value[0] in "\"'" and value[-1] == value[0]:
        return value[0]
    return ""


def _redact_scheme(match: re.Match[str]) -> str:
    credential = match["credential"]
    # A sentence's full stop is not part of the credential.
    core = credential.rstrip(".")
    if not core or not _is_credential(match["scheme"], core):
        return match[0]
    return f"{match['scheme']}{match['space']}{REDACTED}{credential[len(core) :]}"


class Redactor:
    """Redacts secrets from event data and text; the rules are in the module docstring.

    ``extra_keys`` are more key patterns (``Settings.redact_keys``), matched
    as case-insensitive literal substrings of the normalized key
    (:class:`streamapp.secret_keys.SecretKeys`).

    :raises ValueError: for an extra pattern without a letter or digit (it
        would match every key).
    """

    def __init__(self, extra_keys: Iterable[str] = ()) -> None:
        self._is_secret_key = SecretKeys(extra_keys)
        self.extra_keys = self._is_secret_key.extra_keys

    def is_secret_key(self, key: str) -> bool:
        """Tell whether values under ``key`` are redacted."""
        return self._is_secret_key(key)

    def redact(self, value: t.Any) -> t.Any:
        """Return a redacted deep copy of a JSON value; the input is left as it is.

        Dicts, lists and tuples are copied; strings go through
        :meth:`redact_text`; numbers, bools and ``None`` are immutable and
        returned as they are, as is any other object (not JSON).
        """
        if isinstance(value, str):
            return self.redact_text(value)
        if isinstance(value, dict):
            return {
                k: REDACTED if isinstance(k, str) and self._is_secret_key(k) else self.redact(v)
                for k, v in value.items()
            }
        if isinstance(value, list):
            return [self.redact(v) for v in value]
        if isinstance(value, tuple):
            return tuple(self.redact(v) for v in value)
        return value

    # The producer takes any ``Callable[[Any], Any]`` as its redactor.
    __call__ = redact

    def redact_text(self, text: str) -> str:
        """Return ``text`` with credentials, URL passwords and secret pairs redacted.

        The rules run again until they change nothing (at most
        :data:`_PASSES` times), so redacting the result changes nothing
        either: one rule's ``[REDACTED]`` may give another a boundary it needs.
        """
        for _ in range(_PASSES):
            redacted = self._redact_text_once(text)
            if redacted == text:
                return text
            text = redacted
        return text

    def _redact_text_once(self, text: str) -> str:
        text = credentials.redact(text)
        if _TRIGGER.search(text) is None:
            return text
        if "-----BEGIN " in text and "PRIVATE KEY" in text:
            text = _PEM_PRIVATE_KEY.sub(REDACTED, text)
        if "sa_" in text:
            text = _API_TOKEN.sub(REDACTED, text)
        if "@" in text and "://" in text:
            text = _URL_PASSWORD.sub(rf"\g<head>{REDACTED}@", text)
        # A case-insensitive regex scans every position; one lower() is cheaper.
        lowered = text.lower()
        if "bearer" in lowered or "basic" in lowered:
            text = _AUTH_SCHEME.sub(_redact_scheme, text)
        if ": " in text or ":\t" in text:
            text = self._redact_lines(text)
        if "=" in text:
            text = self._redact_pairs(text, assignment_keys(text))
        if ":" in text and ('"' in text or "'" in text):
            text = self._redact_pairs(text, quoted_keys(text))
        return text

    def hold_from(self, text: str) -> int:
        """Where the tail of ``text`` that more text could still make part of a secret begins.

        ``text[:i]`` can be redacted and sent now, ``text[i:]`` waits for
        more text; the rules are :func:`streamapp.holdback.hold_from`'s, with
        this redactor's secret keys.
        """
        return holdback.hold_from(text, self._is_secret_key)

    def _redact_pairs(self, text: str, keys: Iterator[Key]) -> str:
        # Last pair first: in `password= api_key = "x"` the first value is the
        # second key, and taking it first would leave "x" without its key.
        # Each change is right of every key still to come, so their offsets hold.
        for _, start, key, quote in reversed(list(keys)):
            # A value already redacted stays as it is (redaction is idempotent).
            if text.startswith(REDACTED, start) or text[start : start + 1] in ("{", "["):
                continue
            if not self._is_secret_key(key):
                continue
            value = _VALUE.match(text, start)
            if value is None:
                continue
            quote = _quote_of(value[0]) or quote
            text = f"{text[:start]}{quote}{REDACTED}{quote}{text[value.end() :]}"
        return text

    def _redact_lines(self, text: str) -> str:
        parts: list[str] = []
        done = 0
        for key_start, start, key, quote in line_keys(text):
            if key_start < done or not self._is_secret_key(key):
                continue
            if names_an_exception(key):
                continue  # "NoCredentialsError: ..." is an error message, not a pair
            match = _LINE_VALUES[quote].match(text, start)
            if match is None:  # never: every part of the pattern may be empty
                continue
            value_start = match.start("value")
            if "authorization" in normalize(key):
                scheme = _HEADER_SCHEME.match(text, value_start)
                if scheme is not None:
                    value_start = scheme.end()
            value = text[value_start : match.end("value")].rstrip()
            if not value or value == REDACTED:
                continue  # nothing there, or redacted already (redaction is idempotent)
            kept = _quote_of(value)
            parts += (text[done:value_start], kept, REDACTED, kept)
            done = value_start + len(value)
        if not parts:
            return text
        parts.append(text[done:])
        return "".join(parts)
