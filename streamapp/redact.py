"""Redaction: secrets never leave the server (SPEC §7).

:meth:`Redactor.redact` returns a redacted deep copy of a JSON value (the
input is never changed); it runs on every appended event, before it is
stored. :meth:`Redactor.redact_text` does the same for one string (text
chunks, error messages). A redacted value keeps no part of the secret.

Secret keys (case never matters; keys themselves are kept as they are)
----------------------------------------------------------------------
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
HTTP chunk requests) is not seen. A stream of text that a producer writes
piece by piece (``ChunkPublisher``) asks :meth:`Redactor.hold_from` where
the part that more text could still make part of a secret begins, sends the
part before it, and keeps the rest until more text comes or it is closed.
"""

from __future__ import annotations

import functools
import re
import typing as t
from collections.abc import Iterable
from collections.abc import Iterator

from . import credentials
from .credentials import REDACTED

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
_BEARER_PROSE = frozenset({"token", "tokens", "auth", "authentication", "scheme", "of"})

_NOT_ALNUM = re.compile(r"[\W_]+")
_WORDS = re.compile(r"[A-Z]+(?![a-z])|[A-Z]?[a-z]+|[0-9]+")

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

#: The most text :meth:`Redactor.hold_from` keeps back: more than any credential format, a
#: 4096-bit RSA key in PEM or a long header line. Past it, a stream sends what it holds.
MAX_HOLD = 8192
# How far before the end of a line a key whose value has not come yet is looked for.
_OPENER_WINDOW = 160
_PEM_BEGIN = "-----BEGIN "
_PEM_HEADER = re.compile(r"-----BEGIN (?P<label>[A-Z0-9 ]*)-----")
# A key (or scheme word) followed by nothing but what separates it from its value.
_OPEN_KEY = re.compile(r"(?P<key>[\w.-]{1,64})[\"']?[ \t]*(?:=+>?|:)?[ \t]*[\"']?\Z")
# A key, its separator and the quote that opens its value.
_OPEN_QUOTE = re.compile(r"(?P<key>[\w.-]{1,64})[\"']?[ \t]*(?:=+>?|:)[ \t]*\Z")
_SCHEME_WORDS = frozenset({"bearer", "basic"})
# What ends a word that may still be growing into a token, URL or key=value, besides whitespace.
_RUN_ENDS = frozenset("\"'(){}[]<>,;")
_PASSES = 4


def _normalize(key: str) -> str:
    return _NOT_ALNUM.sub("", key).lower()


def _has_secret_word(key: str) -> bool:
    words = [w.lower() for w in _WORDS.findall(key)]
    for i, word in enumerate(words):
        if (word.endswith("token") or word == "session") and (
            i + 1 == len(words) or words[i + 1] not in _COUNTING_WORDS
        ):
            return True
    return bool(words) and words[-1] == "pass"


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
        key_end = equals
        while key_end > 0 and text[key_end - 1] in " \t":  # `password = "x"`
            key_end -= 1
        reversed_key = _KEY_CHARS.match(text[max(0, key_end - _MAX_KEY) : key_end][::-1])
        if reversed_key is not None:
            value = equals + 1
            while value < len(text) and text[value] in "=> \t":  # `==` and `=>` are one operator
                value += 1
            yield _Key(key_end - reversed_key.end(), value, reversed_key[0][::-1], "")
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


def _with_quote(line: str, start: int) -> int:
    """``start``, or the quote right before it: a quoted key goes with its quotes."""
    return start - 1 if start and line[start - 1] in "\"'" else start


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
        return self._substrings.search(_normalize(key)) is not None or _has_secret_word(key)

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
            text = self._redact_pairs(text, _assignment_keys(text))
        if ":" in text and ('"' in text or "'" in text):
            text = self._redact_pairs(text, _quoted_keys(text))
        return text

    def hold_from(self, text: str) -> int:
        """Where the tail of ``text`` that more text could still make part of a secret begins.

        For text written piece by piece: ``text[:i]`` can be redacted and
        sent now, ``text[i:]`` waits for more text. The tail starts at the
        earliest of:

        - the last word, when ``text`` does not end in whitespace, a quote, a
          bracket, a comma or a semicolon (a token, URL or ``key=value`` may
          go on);
        - a secret key or scheme word (Bearer, Basic) on the last line with
          nothing but separators after it (``password = ``, ``"api_key": ``),
          or whose quoted value is not closed yet;
        - an unquoted secret ``key: `` on the last line: its value runs to
          the line end, which has not come;
        - ``-----BEGIN`` of a private key (or of a header not yet complete)
          whose END line has not come.

        A tail longer than :data:`MAX_HOLD` characters holds no credential
        this module knows, and is sent too. A line end, or a space after a
        word, releases ordinary text at once.
        """
        n = len(text)
        cut = n
        while cut > 0 and n - cut <= MAX_HOLD and text[cut - 1] not in _RUN_ENDS and not text[cut - 1].isspace():
            cut -= 1
        if cut > 0 and text[cut - 1] in "\"'":
            cut -= 1  # the quote may open a key: `"api_key": …` must reach the redactor whole
        begin = text.rfind(_PEM_BEGIN)
        if begin != -1 and begin < cut and self._pem_open(text, begin):
            cut = begin
        line_start = max(text.rfind("\n", 0, cut), text.rfind("\r", 0, cut)) + 1
        line = text[line_start:cut]
        for key in _line_keys(line):
            if self._is_secret_key(key.key) and not _normalize(key.key).endswith(_EXCEPTION_SUFFIXES):
                cut = min(cut, line_start + key.start)
                break
        window = max(0, len(line) - _OPENER_WINDOW)
        opener = _OPEN_KEY.search(line, window)
        if opener is not None and self._opens(opener["key"]):
            cut = min(cut, line_start + _with_quote(line, opener.start()))
        for quote in "\"'":
            at = line.rfind(quote)
            opened = _OPEN_QUOTE.search(line, max(0, at - _OPENER_WINDOW), at) if at > 0 else None
            if opened is not None and self._is_secret_key(opened["key"]):
                cut = min(cut, line_start + _with_quote(line, opened.start()))
        return cut if n - cut <= MAX_HOLD else n

    def _opens(self, word: str) -> bool:
        return word.lower() in _SCHEME_WORDS or self._is_secret_key(word)

    @staticmethod
    def _pem_open(text: str, begin: int) -> bool:
        header = _PEM_HEADER.match(text, begin)
        if header is None:
            return "-----" not in text[begin + len(_PEM_BEGIN) :]  # the header itself is still coming
        label = header["label"]
        return "PRIVATE KEY" in label and f"-----END {label}-----" not in text[header.end() :]

    def _redact_pairs(self, text: str, keys: Iterator[_Key]) -> str:
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
