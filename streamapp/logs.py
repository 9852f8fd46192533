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

With ``STREAMAPP_LOG_FORMAT=json`` (SPEC §9) every line of all three logs is
one JSON object instead (:class:`JsonFormatter`): ``json.dumps`` with
``ensure_ascii`` escapes every control character, C1, U+2028/2029 and all other
non-ASCII by itself, and DEL by hand (:func:`dumps`), so a JSON line is
printable ASCII and holds exactly one record. An access record carries the
request's fields, the path and never the query string (stream tickets travel
there, SPEC §7); ``access_log_format`` is not used then.

Records with fields of their own (:func:`structured`, e.g. each stream's end)
carry them as keys in JSON and as ``key=value`` after the message in text.

A host application logs as it likes; it can install :class:`Formatter` or
:class:`JsonFormatter` on its own handlers.
"""

from __future__ import annotations

import datetime
import json
import logging
import re
import traceback
import typing as t

from gunicorn import glogging

from . import config

_UNSAFE = re.compile("[\\\\\x00-\x1f\x7f-\x9f\u2028\u2029]")
_NAMED = {"\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t"}
#: Attribute of a record holding its fields (``extra={FIELDS: {...}}``), and its bare message.
FIELDS = "streamapp_fields"
_BARE_MESSAGE = "streamapp_message"
#: Keys every JSON line starts with; a record's own fields never replace them.
_BASE_KEYS = ("ts", "level", "logger", "message", "pid")


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


def dumps(obj: t.Any) -> str:
    """``obj`` as one line of JSON in printable ASCII only: no value can end the line or drive a terminal.

    ``ensure_ascii`` escapes C0, C1, U+2028/2029 and every other non-ASCII
    character; DEL is ASCII, so it is escaped here. Values JSON cannot hold
    are written as their ``str()``, escaped the same way.
    """
    return json.dumps(obj, ensure_ascii=True, default=str, separators=(",", ":")).replace("\x7f", "\\u007f")


class JsonFormatter(logging.Formatter):
    """One JSON object per record: ``ts``, ``level``, ``logger``, ``message``, ``pid``, then the record's fields."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, t.Any] = {
            "ts": datetime.datetime.fromtimestamp(record.created, datetime.UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": getattr(record, _BARE_MESSAGE, None) or record.getMessage(),
            "pid": record.process,
        }
        for key, value in (getattr(record, FIELDS, None) or {}).items():
            if key not in _BASE_KEYS:
                out[key] = value
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        elif record.exc_text:
            out["exc"] = record.exc_text
        if record.stack_info:
            out["stack"] = self.formatStack(record.stack_info)
        return dumps(out)


def structured(logger: logging.Logger, level: int, message: str, **fields: t.Any) -> None:
    """Log ``message`` with ``fields``: JSON keys of their own, or ``key=value`` after it in text.

    Never pass a secret, ticket, token or query string as a field (SPEC §9).
    """
    if not logger.isEnabledFor(level):
        return
    pairs = " ".join(f"{key}={value}" for key, value in fields.items())
    logger.log(level, "%s %s", message, pairs, extra={FIELDS: fields, _BARE_MESSAGE: message})


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

    In text, the access log keeps ``access_log_format`` as configured; only the
    values that fill it are escaped (before gunicorn's own quoting of ``"``).
    With ``STREAMAPP_LOG_FORMAT=json`` both logs write :class:`JsonFormatter`
    lines and an access record is built from the request's fields instead.
    """

    json = False

    def setup(self, cfg: t.Any) -> None:
        # Read here, in the master too: gunicorn logs before the app (and its Settings) loads.
        self.json = config.log_format() == "json"
        root = logging.getLogger()
        for handler in [h for h in root.handlers if getattr(h, "_streamapp", False)]:
            root.removeHandler(handler)  # a reload sets up again: no second copy
        super().setup(cfg)
        for handler in self.error_log.handlers:
            if getattr(handler, "_gunicorn", False):
                handler.setFormatter(JsonFormatter() if self.json else Formatter(self.error_fmt, self.datefmt))
                # The application's records go to the same place, in the same form.
                handler._streamapp = True
                root.addHandler(handler)
        if self.json:
            for handler in self.access_log.handlers:
                if getattr(handler, "_gunicorn", False):
                    handler.setFormatter(JsonFormatter())
        # streamapp's INFO records (each stream's end, SPEC §9) at gunicorn's --log-level, not the root's WARNING.
        logging.getLogger("streamapp").setLevel(self.loglevel)
        # No format here names a thread, and under gevent every request is a greenlet that
        # Python names by making a dummy Thread for it: a sixth of each record's cost (issue 10).
        logging.logThreads = False

    def access(self, resp: t.Any, req: t.Any, environ: t.Any, request_time: t.Any) -> None:
        if not self.json:
            super().access(resp, req, environ, request_time)
            return
        if not self.access_log_enabled:
            return
        status = resp.status.split(None, 1)[0] if isinstance(resp.status, str) else resp.status
        fields = {
            "method": environ.get("REQUEST_METHOD"),
            "path": environ.get("PATH_INFO"),  # never QUERY_STRING or RAW_URI: tickets travel there
            "protocol": environ.get("SERVER_PROTOCOL"),
            "status": int(status) if str(status).isdigit() else status,
            "bytes": getattr(resp, "sent", None),
            "duration_ms": round(request_time.total_seconds() * 1000, 3),
            "remote_addr": environ.get("REMOTE_ADDR"),
        }
        message = f"{fields['method']} {fields['path']} {fields['status']}"
        self.access_log.info("%s", message, extra={FIELDS: fields})

    def atoms(self, resp: t.Any, req: t.Any, environ: t.Any, request_time: t.Any) -> dict[str, t.Any]:
        atoms = super().atoms(resp, req, environ, request_time)
        return {key: escape(value) if isinstance(value, str) else value for key, value in atoms.items()}
