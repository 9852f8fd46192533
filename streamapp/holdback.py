"""Text written piece by piece: the tail held back until more text can tell whether it is a secret (SPEC §7).

Pure: no I/O. Each string is redacted on its own, so a secret split over two
strings would not be seen. A stream of text that a producer writes piece by
piece (``ChunkPublisher``) asks :func:`hold_from` (through
``Redactor.hold_from``) where the part that more text could still make part
of a secret begins, sends the part before it, and keeps the rest until more
text comes or it is closed.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from .secret_keys import line_keys
from .secret_keys import names_an_exception

#: The most text :func:`hold_from` keeps back: more than any credential format, a
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


def hold_from(text: str, is_secret_key: Callable[[str], bool]) -> int:
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
    if begin != -1 and begin < cut and _pem_open(text, begin):
        cut = begin
    line_start = max(text.rfind("\n", 0, cut), text.rfind("\r", 0, cut)) + 1
    line = text[line_start:cut]
    for key in line_keys(line):
        if is_secret_key(key.key) and not names_an_exception(key.key):
            cut = min(cut, line_start + key.start)
            break
    window = max(0, len(line) - _OPENER_WINDOW)
    opener = _OPEN_KEY.search(line, window)
    if opener is not None and (opener["key"].lower() in _SCHEME_WORDS or is_secret_key(opener["key"])):
        cut = min(cut, line_start + _with_quote(line, opener.start()))
    for quote in "\"'":
        at = line.rfind(quote)
        opened = _OPEN_QUOTE.search(line, max(0, at - _OPENER_WINDOW), at) if at > 0 else None
        if opened is not None and is_secret_key(opened["key"]):
            cut = min(cut, line_start + _with_quote(line, opened.start()))
    return cut if n - cut <= MAX_HOLD else n


def _with_quote(line: str, start: int) -> int:
    """``start``, or the quote right before it: a quoted key goes with its quotes."""
    return start - 1 if start and line[start - 1] in "\"'" else start


def _pem_open(text: str, begin: int) -> bool:
    header = _PEM_HEADER.match(text, begin)
    if header is None:
        return "-----" not in text[begin + len(_PEM_BEGIN) :]  # the header itself is still coming
    label = header["label"]
    return "PRIVATE KEY" in label and f"-----END {label}-----" not in text[header.end() :]
