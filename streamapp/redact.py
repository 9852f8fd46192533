"""Redaction: secrets never leave the server (SPEC §7).

:meth:`Redactor.redact` returns a redacted deep copy of a JSON value (the
input is never changed); it runs on every appended event, before it is
stored. :meth:`Redactor.redact_text` does the same for one string (text
chunks, error messages). A redacted value keeps no part of the secret.

Secret keys (case never matters; keys themselves are kept as they are)
----------------------------------------------------------------------
1. *Substrings.* With every character that is not a letter or a digit
   removed (``X-Api-Key`` → ``xapikey``), the key contains ``password``,
   ``passwd``, ``secret``, ``apikey``, ``authorization``, ``cookie``,
   ``privatekey`` or ``credential`` — or one of the extra patterns
   (``STREAMAPP_REDACT_KEYS``). Extras are literal substrings, never
   regexes, normalized the same way: ``session_id`` matches ``sessionId``,
   ``X-Session-ID`` and ``old_session_id`` (and ``pin`` would match
   ``shipping``: choose extras with care).
2. *The word token.* The key is cut into words at every character that is
   not a letter or a digit and at camelCase boundaries (``X-Auth-Token`` →
   x auth token, ``tokenValue`` → token value, ``CSRFToken`` → csrf token).
   A word that is ``token`` or ends in ``token`` (``csrftoken``) makes the
   key secret, unless the next word counts tokens (count, counts, usage,
   limit, limits, budget). ``tokens`` is another word, so LLM usage data —
   ``prompt_tokens``, ``max_tokens``, ``tokens_used``, ``promptTokenCount``,
   ``token_usage`` — survives, and a list under ``refresh_tokens`` is only
   scanned as strings.

Whatever is under a secret key — a string, number, bool, ``None``, object
or list — becomes ``"[REDACTED]"``. A key that is not a string (a Python
producer's ``{1: ...}``) is never secret.

Inside strings (values and list items, at any depth)
----------------------------------------------------
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
- ``key=value`` (query strings, DSNs, ``--password=x``) and ``"key": value``
  (JSON or a Python repr, one level of quoting) whose key is secret by the
  rules above → the value becomes ``[REDACTED]``, its quotes kept; object
  and list values are left to the pairs inside them;
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

Text is best effort: a secret split across two chunks is not seen, and
neither is ``password = "x"`` with spaces around ``=``.
"""

from __future__ import annotations

import functools
import re
import typing as t
from collections.abc import Iterable
from collections.abc import Iterator

REDACTED = "[REDACTED]"

_SECRET_SUBSTRINGS = (
    "password",
    "passwd",
    "secret",
    "apikey",
    "authorization",
    "cookie",
    "privatekey",
    "credential",
)
_COUNTING_WORDS = frozenset({"count", "counts", "usage", "limit", "limits", "budget"})
_BEARER_PROSE = frozenset({"token", "tokens", "auth", "authentication", "scheme", "of"})

_NOT_ALNUM = re.compile(r"[\W_]+")
_WORDS = re.compile(r"[A-Z]+(?![a-z])|[A-Z]?[a-z]+|[0-9]+")

# Every text rule needs one of these characters; most ids and enum values
# have none and skip all the work.
_TRIGGER = re.compile(r"[\s=:_]")
_API_TOKEN = re.compile(r"(?<![A-Za-z0-9])sa_[0-9a-f]{12}_[A-Za-z0-9_-]+")
_URL_PASSWORD = re.compile(r"(?P<head>\b[A-Za-z][A-Za-z0-9+.-]*://[^\s:/?#@\"'<>]*:)(?P<password>[^\s/?#\"'<>\\]+)@")
_AUTH_SCHEME = re.compile(r"\b(?P<scheme>(?i:bearer|basic))(?P<space>\s+)(?P<credential>[A-Za-z0-9._~+/=-]+)")
_BASE64 = re.compile(r"[A-Za-z0-9+/]+={0,2}")
_PLAIN_PIECE = r"(?:[a-z]+|[A-Z][a-z]*|[A-Z]+)"
_PLAIN_WORD = re.compile(rf"{_PLAIN_PIECE}(?:-{_PLAIN_PIECE})*")
_KEY_CHARS = re.compile(r"[\w.-]+")
_MAX_KEY = 64
_QUOTED_KEY = re.compile(rf"(?P<quote>[\"'])(?P<key>[^\"'\s\\]{{1,{_MAX_KEY}}})(?P=quote)\s*:\s*")
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
_COLON_SPACE = re.compile(r":[ \t]")
_HEADER_SCHEME = re.compile(r"(?i:bearer|basic|digest|negotiate|token)[ \t]+")
_EXCEPTION_SUFFIXES = ("error", "exception", "warning")


def _normalize(key: str) -> str:
    return _NOT_ALNUM.sub("", key).lower()


def _has_token_word(key: str) -> bool:
    words = [w.lower() for w in _WORDS.findall(key)]
    for i, word in enumerate(words):
        if word.endswith("token") and (i + 1 == len(words) or words[i + 1] not in _COUNTING_WORDS):
            return True
    return False


def _is_credential(scheme: str, credential: str) -> bool:
    if scheme.lower() == "bearer":
        return credential.lower() not in _BEARER_PROSE
    return (
        len(credential) % 4 == 0
        and _BASE64.fullmatch(credential) is not None
        and _PLAIN_WORD.fullmatch(credential) is None
    )


class _Key(t.NamedTuple):
    start: int
    value_start: int
    key: str
    #: the quote a bare value gets: the key's in JSON text (so it stays JSON), none after ``=``
    quote: str


def _assignment_keys(text: str) -> Iterator[_Key]:
    # Anchored on each "=" and read backwards: a regex for "key=" would try
    # every word start of the text, five times slower on prose.
    equals = text.find("=")
    while equals != -1:
        reversed_key = _KEY_CHARS.match(text[max(0, equals - _MAX_KEY) : equals][::-1])
        if reversed_key is not None:
            yield _Key(equals - reversed_key.end(), equals + 1, reversed_key[0][::-1], "")
        equals = text.find("=", equals + 1)


def _line_keys(text: str) -> Iterator[_Key]:
    # Anchored on each ": " and read backwards, as for "=".
    for separator in _COLON_SPACE.finditer(text):
        colon = separator.start()
        reversed_key = _KEY_CHARS.match(text[max(0, colon - _MAX_KEY) : colon][::-1])
        if reversed_key is not None:
            start = colon - reversed_key.end()
            before = text[start - 1 : start] if start else ""
            yield _Key(start, colon + 1, reversed_key[0][::-1], before if before in ("'", '"') else "")


def _quoted_keys(text: str) -> Iterator[_Key]:
    for key in _QUOTED_KEY.finditer(text):
        yield _Key(key.start(), key.end(), key["key"], key["quote"])


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
    as case-insensitive literal substrings of the normalized key.

    :raises ValueError: for an extra pattern without a letter or digit (it
        would match every key).
    """

    def __init__(self, extra_keys: Iterable[str] = ()) -> None:
        extras: list[str] = []
        for pattern in extra_keys:
            normalized = _normalize(pattern)
            if not normalized:
                raise ValueError(f"redaction key pattern {pattern!r} has no letter or digit")
            extras.append(normalized)
        self.extra_keys = tuple(extras)
        substrings = sorted({*_SECRET_SUBSTRINGS, *extras})
        self._substrings = re.compile("|".join(re.escape(s) for s in substrings))
        # Events repeat the same few keys; a bounded per-instance cache makes
        # the check a dict lookup without letting odd keys grow memory.
        self._is_secret_key = functools.lru_cache(maxsize=4096)(self._classify)

    def _classify(self, key: str) -> bool:
        return self._substrings.search(_normalize(key)) is not None or _has_token_word(key)

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
        """Return ``text`` with credentials, URL passwords and secret pairs redacted."""
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
            text = self._redact_pairs(text, _assignment_keys(text))
        if ":" in text and ('"' in text or "'" in text):
            text = self._redact_pairs(text, _quoted_keys(text))
        return text

    def _redact_pairs(self, text: str, keys: Iterator[_Key]) -> str:
        parts: list[str] = []
        done = 0
        for key_start, start, key, quote in keys:
            # Keys inside a value already redacted are gone with it; a value
            # already redacted stays as it is (redaction is idempotent).
            if key_start < done or text.startswith(REDACTED, start) or text[start : start + 1] in ("{", "["):
                continue
            if not self._is_secret_key(key):
                continue
            value = _VALUE.match(text, start)
            if value is None:
                continue
            quote = _quote_of(value[0]) or quote
            parts += (text[done:start], quote, REDACTED, quote)
            done = value.end()
        if not parts:
            return text
        parts.append(text[done:])
        return "".join(parts)

    def _redact_lines(self, text: str) -> str:
        parts: list[str] = []
        done = 0
        for key_start, start, key, quote in _line_keys(text):
            if key_start < done or not self._is_secret_key(key):
                continue
            if _normalize(key).endswith(_EXCEPTION_SUFFIXES):
                continue  # "NoCredentialsError: ..." is an error message, not a pair
            match = _LINE_VALUES[quote].match(text, start)
            if match is None:  # never: every part of the pattern may be empty
                continue
            value_start = match.start("value")
            if "authorization" in _normalize(key):
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
