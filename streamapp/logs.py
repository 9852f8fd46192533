"""One escaping rule for every value that reaches a log (SPEC §2 "Robustness", issue 11).

A percent-encoded CR LF in a request path once reached the access log raw, so
any client could forge log lines. Now every control character — C0 (CR, LF,
NUL, ESC, tab…), DEL and C1 — and the Unicode line and paragraph separators
are written as escapes (``\\r``, ``\\n``, ``\\t``, ``\\xNN``, ``\\u2028``), and
a backslash as ``\\\\``, so an escape in a log always stands for exactly one
character. The rule covers:

* the access log: :class:`GunicornLogger` escapes every atom (path, headers,
  environ values) before gunicorn formats the line (``logger_class`` in
  ``gunicorn.conf.py``);
* the error log and the application log: :class:`Formatter` escapes the
  message with its arguments, and the exception messages of a traceback,
  whose frames stay on lines of their own. :class:`GunicornLogger` puts the
  error log's handler on the root logger, so streamapp's (and every library's)
  log lines take the same path and format.

A host application logs as it likes; it can install :class:`Formatter` on its
own handlers.
"""

from __future__ import annotations

import logging
import re
import traceback
import typing as t

from gunicorn import glogging

_UNSAFE = re.compile("[\\\\\x00-\x1f\x7f-\x9f\u2028\u2029]")
_NAMED = {"\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape_one(match: re.Match[str]) -> str:
    char = match.group()
    named = _NAMED.get(char)
    if named is not None:
        return named
    return f"\\x{ord(char):02x}" if ord(char) < 0x100 else f"\\u{ord(char):04x}"


def escape(text: str) -> str:
    """``text`` with every control character, line separator and backslash written as an escape."""
    return _UNSAFE.sub(_escape_one, text)


class Formatter(logging.Formatter):
    """A ``logging.Formatter`` whose every line is escaped; a traceback keeps its frames' lines."""

    def format(self, record: logging.LogRecord) -> str:
        cached = record.exc_text
        if record.exc_info:
            record.exc_text = None  # another handler's rendering is not escaped: never reuse it
        elif cached:
            record.exc_text = "\n".join(escape(line) for line in cached.split("\n"))
        try:
            return super().format(record)
        finally:
            record.exc_text = cached

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 (logging's name)
        return escape(super().formatMessage(record))

    def formatException(self, ei: t.Any) -> str:  # noqa: N802 (logging's name)
        return "\n".join(_traceback_lines(traceback.TracebackException(*ei[:3])))

    def formatStack(self, stack_info: str) -> str:  # noqa: N802 (logging's name)
        return "\n".join(escape(line) for line in stack_info.split("\n"))


def _traceback_lines(exc: traceback.TracebackException) -> list[str]:
    """The lines of a traceback, its chain first, each one escaped.

    ``format()`` cannot be used whole: an exception message with a newline
    would come back as two lines, the second one free text. Frames (source
    code, never request data) are split into their own lines; the exception
    and its notes are one line each.
    """
    lines: list[str] = []
    if exc.__cause__ is not None:
        lines += _traceback_lines(exc.__cause__)
        lines += ["", "The above exception was the direct cause of the following exception:", ""]
    elif exc.__context__ is not None and not exc.__suppress_context__:
        lines += _traceback_lines(exc.__context__)
        lines += ["", "During handling of the above exception, another exception occurred:", ""]
    if exc.stack:
        lines.append("Traceback (most recent call last):")
        lines += [escape(line) for chunk in exc.stack.format() for line in chunk.rstrip("\n").split("\n")]
    lines += [escape(line.rstrip("\n")) for line in exc.format_exception_only()]
    for number, inner in enumerate(getattr(exc, "exceptions", None) or (), 1):
        lines += [f"+---- sub-exception {number} ----", *_traceback_lines(inner)]
    return lines


class GunicornLogger(glogging.Logger):
    """gunicorn's logger with :func:`escape` on every access-log atom and :class:`Formatter` on its error log.

    The access log keeps ``access_log_format`` as configured; only the values
    that fill it are escaped (before gunicorn's own quoting of ``"``).
    """

    def setup(self, cfg: t.Any) -> None:
        root = logging.getLogger()
        for handler in [h for h in root.handlers if getattr(h, "_streamapp", False)]:
            root.removeHandler(handler)  # a reload sets up again: no second copy
        super().setup(cfg)
        for handler in self.error_log.handlers:
            if getattr(handler, "_gunicorn", False):
                handler.setFormatter(Formatter(self.error_fmt, self.datefmt))
                # The application's records go to the same place, in the same form.
                handler._streamapp = True  # type: ignore[attr-defined]
                root.addHandler(handler)

    def atoms(self, resp: t.Any, req: t.Any, environ: t.Any, request_time: t.Any) -> dict[str, t.Any]:
        atoms = super().atoms(resp, req, environ, request_time)
        return {key: escape(value) if isinstance(value, str) else value for key, value in atoms.items()}
