"""How deeply JSON nests, and what in it PostgreSQL cannot store, found without recursion
(SPEC §2 "Robustness", issue 11).

Every object or array is one level: ``{}`` is 1, ``{"a": [1]}`` is 2. The JSON
decoder, the catalog, the output schema checks, the redactor and ``json.dumps``
all recurse, and a value a few hundred levels deep ends any of them in
``RecursionError``; these two checks run first, in linear time and constant
stack: :func:`text_depth` on a body before it is parsed, :func:`check_value`
on a value a Python producer hands over.

Pure: no I/O, no Flask.
"""

from __future__ import annotations

import re
import typing as t
from collections.abc import Iterator

from .errors import Invalid

DEFAULT_MAX_DEPTH = 64
#: A JSON string, or one left open up to the end of the text: a backslash escapes the next
#: character. Every match attempt succeeds, so a scan never goes back over the text.
_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*(?:"|\\?\Z)', re.DOTALL)
_NOT_BRACKET = re.compile(r"[^\[\]{}]+")
_CONTAINERS = (dict, list, tuple)
_SURROGATE = re.compile("[\ud800-\udfff]")


def text_depth(text: str, limit: int) -> int:
    """How deeply a JSON text nests objects and arrays, counting no further than ``limit + 1``.

    Brackets inside strings do not count (a backslash escapes the character
    after it), a string left open ends the count (a decoder fails there too),
    and a stray closing bracket never takes the count below zero.
    """
    depth = deepest = 0
    for bracket in _NOT_BRACKET.sub("", _STRING.sub("", text)):
        if bracket in "[{":
            depth += 1
            if depth > deepest:
                deepest = depth
                if deepest > limit:
                    break
        elif depth:
            depth -= 1
    return deepest


def deeper_than(text: str, limit: int) -> bool:
    """Whether a JSON text nests deeper than ``limit``."""
    # A text with few brackets cannot nest deeper than it has them: no scan needed.
    return text.count("[") + text.count("{") > limit and text_depth(text, limit) > limit


def check_value(value: t.Any, limit: int, where: str) -> None:
    """Refuse a Python value that nests dicts, lists and tuples deeper than ``limit``.

    A value that contains itself is refused too: it is endlessly deep.

    :raises Invalid: naming ``where`` and the limit.
    """
    stack = [(value, 1)] if isinstance(value, _CONTAINERS) else []
    while stack:
        item, depth = stack.pop()
        if depth > limit:
            raise Invalid(f"{where} is nested deeper than {limit} levels of objects and arrays")
        children = item.values() if isinstance(item, dict) else item
        stack.extend((child, depth + 1) for child in children if isinstance(child, _CONTAINERS))


def unstorable(value: t.Any) -> str | None:
    """What in a JSON value PostgreSQL's text and jsonb cannot hold, or ``None``.

    U+0000 and lone UTF-16 surrogates, in any string, keys included. Refusing them
    before the INSERT keeps a failing statement, and the value with it, out of the
    server's log (SPEC §2).
    """
    for item in _strings(value):
        if "\x00" in item:
            return "the character U+0000"
        if not item.isascii() and _SURROGATE.search(item):
            return "a lone UTF-16 surrogate"
    return None


def _strings(value: t.Any) -> Iterator[str]:
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            yield item
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, (list, tuple)):
            stack.extend(item)
