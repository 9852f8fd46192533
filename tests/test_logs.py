"""One escaping rule for every value that reaches a log (SPEC §2 "Robustness", issue 11).

Control characters (C0 with CR, LF, NUL and ESC, DEL, C1) and the Unicode line
separators are written as escapes, in the access log and in the application
log, so no request can forge a log line or drive a terminal.
"""

from __future__ import annotations

import logging
import sys
import typing as t

import pytest
from gunicorn.config import Config
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st

from streamapp import logs

UNSAFE = {*map(chr, range(0x20)), "\x7f", *map(chr, range(0x80, 0xA0)), "\u2028", "\u2029"}


@pytest.mark.parametrize(
    "raw, escaped",
    [
        ("plain text", "plain text"),
        ("a\r\nFORGED", "a\\r\\nFORGED"),
        ("nul\x00", "nul\\x00"),
        ("tab\there", "tab\\there"),
        ("\x1b[31mred", "\\x1b[31mred"),
        ("del\x7f", "del\\x7f"),
        ("c1\x85\x9b", "c1\\x85\\x9b"),
        ("\u2028\u2029", "\\u2028\\u2029"),
        ("back\\slash", "back\\\\slash"),  # so an escape in the log always means one character
        ("h\u00e9llo \u2713 \U0001f600", "h\u00e9llo \u2713 \U0001f600"),
    ],
)
def test_escape(raw, escaped):
    assert logs.escape(raw) == escaped


@settings(max_examples=200, deadline=None)
@given(st.text(st.characters(codec=None, exclude_categories=())))
def test_escaped_text_holds_no_control_character(text):
    escaped = logs.escape(text)
    assert not UNSAFE & set(escaped)
    if not (UNSAFE | {"\\"}) & set(text):
        assert escaped == text


def _record(msg: str, *args: t.Any, exc_info: t.Any = None) -> logging.LogRecord:
    return logging.LogRecord("streamapp.test", logging.ERROR, __file__, 1, msg, args, exc_info)


def test_formatter_escapes_the_message_and_its_arguments():
    out = logs.Formatter("%(levelname)s %(message)s").format(_record("user said %s\n", "hi\r\nERROR forged"))
    assert out == "ERROR user said hi\\r\\nERROR forged\\n"


def _raise(message: str) -> t.Any:
    try:
        try:
            raise KeyError(message)
        except KeyError as inner:
            raise ValueError(message + "\x1b[2J") from inner
    except ValueError:
        return sys.exc_info()


def test_tracebacks_keep_their_lines_but_escape_the_exception_messages():
    out = logs.Formatter("%(message)s").format(_record("failed", exc_info=_raise("bad\r\nFORGED line")))
    lines = out.split("\n")
    assert lines[0] == "failed"
    assert lines[1] == "Traceback (most recent call last):"
    assert len(lines) > 6  # frames, the cause and its banner stay on lines of their own
    assert not [line for line in lines if line.startswith("FORGED")]
    assert "ValueError: bad\\r\\nFORGED line\\x1b[2J" in lines
    assert "The above exception was the direct cause of the following exception:" in lines
    assert not UNSAFE - {"\n"} & set(out)


def test_gunicorn_logger_escapes_every_access_log_atom(tmp_path):
    cfg = Config()
    cfg.set("accesslog", str(tmp_path / "access.log"))
    cfg.set("access_log_format", '%(h)s "%(m)s %(U)s %(H)s" %(s)s %({x-test}i)s "%(a)s" %({x-out}o)s')
    logger = logs.GunicornLogger(cfg)
    try:
        environ = {
            "REQUEST_METHOD": "GET",
            "RAW_URI": "/x",
            "SERVER_PROTOCOL": "HTTP/1.1",
            "REMOTE_ADDR": "127.0.0.1",
            "PATH_INFO": "/api/v0/\r\nFORGED\x00line",
            "HTTP_USER_AGENT": 'agent\x85"quoted"\\',
        }
        response = _Response([("X-Out", "o\x9bk")])
        request = _Request([("X-TEST", "a\tb\x1bc")])
        logger.access(response, request, environ, _Elapsed())
    finally:
        for handler in logger.access_log.handlers:
            handler.close()
    written = (tmp_path / "access.log").read_text()
    assert written == (
        '127.0.0.1 "GET /api/v0/\\r\\nFORGED\\x00line HTTP/1.1" 404 a\\tb\\x1bc "agent\\x85\\"quoted\\"\\\\" o\\x9bk\n'
    )


def test_gunicorn_logger_sends_the_application_log_through_the_same_rule(tmp_path):
    cfg = Config()
    cfg.set("errorlog", str(tmp_path / "error.log"))
    logger = logs.GunicornLogger(cfg)
    try:
        logging.getLogger("streamapp.test").warning("value %r then %s", "x", "y\r\nFORGED line")
        logging.getLogger("streamapp.test").error("failed", exc_info=_raise("z\nFORGED too"))
        logger.error("gunicorn's own %s", "line\nFORGED")
    finally:
        root = logging.getLogger()
        for handler in [*root.handlers, *logger.error_log.handlers]:
            if getattr(handler, "_gunicorn", False):
                root.removeHandler(handler)
                handler.close()
    written = (tmp_path / "error.log").read_text()
    assert "value 'x' then y\\r\\nFORGED line" in written
    assert "ValueError: z\\nFORGED too\\x1b[2J" in written
    assert "gunicorn's own line\\nFORGED" in written
    assert not [line for line in written.splitlines() if line.startswith("FORGED")]


class _Response:
    status = "404 NOT FOUND"
    sent = None

    def __init__(self, headers: list[tuple[str, str]]) -> None:
        self.headers = headers


class _Request:
    def __init__(self, headers: list[tuple[str, str]]) -> None:
        self.headers = headers


class _Elapsed:
    seconds = 0
    microseconds = 1500
