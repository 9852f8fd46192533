"""``streamapp follow URL``: one execution's stream in a terminal or a script (SPEC §6).

Exit codes: 0 after ``complete`` (or a 204: the execution ended at or before
``--last-event-id``, so there is nothing left to show), 1 after ``error``,
2 for a usage error, 3 when the stream cannot be followed — refused (401, 403),
unknown (404), bad request (400), or unreachable for ``--max-wait`` seconds.

The token comes from ``STREAMAPP_TOKEN`` or ``--token-file``, never from an
argument: arguments end up in shell history and in every user's ``ps``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import typing as t

from . import client

if t.TYPE_CHECKING:
    from collections.abc import Sequence

EXIT_COMPLETE, EXIT_ERROR, EXIT_USAGE, EXIT_UNFOLLOWABLE = 0, 1, 2, 3
TOKEN_VARIABLE = "STREAMAPP_TOKEN"
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_LONG = 200


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``streamapp`` command; the exit code."""
    args = _parser().parse_args(argv)
    parser = args.parser  # usage errors name the subcommand's usage
    if args.token is not None:
        parser.error(f"a token is never an argument (shell history, ps): set {TOKEN_VARIABLE} or use --token-file")
    token = _token(parser, args.token_file)
    events = [name.strip() for name in args.events.split(",")] if args.events is not None else None
    try:
        stream = client.follow(
            args.url,
            token=token,
            last_event_id=args.last_event_id,
            events=events,
            max_wait=args.max_wait,
            on_status=_report,
        )
    except ValueError as exc:
        parser.error(str(exc))
    printer = _Printer(sys.stdout, args.json)
    try:
        for event in stream:
            printer.event(event)
            if event.terminal:
                return EXIT_COMPLETE if event.type == "complete" else EXIT_ERROR
    except client.FollowError as exc:
        printer.end_line()
        print(f"streamapp: {_clean(str(exc))}", file=sys.stderr)
        return EXIT_UNFOLLOWABLE
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader went away (`| head`): stop quietly, without a second error at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_ERROR
    printer.end_line()
    print("streamapp: the execution had already ended; nothing after the given id", file=sys.stderr)
    return EXIT_COMPLETE


def _parser() -> argparse.ArgumentParser:
    # allow_abbrev=False: `--token X` must never be read as an abbreviation of --token-file.
    parser = argparse.ArgumentParser(
        prog="streamapp", description="streamapp's command-line client.", allow_abbrev=False
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    follow = commands.add_parser(
        "follow",
        allow_abbrev=False,
        help="follow one execution's event stream until it ends",
        description=f"Follow one execution's event stream until it ends. The token is read from {TOKEN_VARIABLE} "
        "or --token-file. Exit codes: 0 complete, 1 error, 2 usage, 3 cannot be followed.",
    )
    follow.add_argument("url", help="the full stream URL, e.g. http://host/api/v0/executions/workflows/ID/stream")
    follow.add_argument("--last-event-id", type=_cursor, metavar="N", help="resume after event N")
    follow.add_argument("--events", metavar="A,B", help="only these event types (terminal events always come)")
    follow.add_argument("--json", action="store_true", help="print one JSON object per line, text chunks too")
    follow.add_argument("--token-file", metavar="PATH", help=f"read the token from this file, not {TOKEN_VARIABLE}")
    follow.add_argument(
        "--max-wait",
        type=_seconds,
        default=60.0,
        metavar="SECONDS",
        help="give up after this long without a stream (default 60)",
    )
    follow.add_argument("--token", help=argparse.SUPPRESS)  # only to refuse it with a helpful message
    follow.set_defaults(parser=follow)
    return parser


def _cursor(value: str) -> int:
    if not value.isascii() or not value.isdigit() or int(value) >= 2**63:
        raise argparse.ArgumentTypeError("must be a non-negative integer below 2**63")
    return int(value)


def _seconds(value: str) -> float:
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1.0
    if not 0 <= seconds < float("inf"):
        raise argparse.ArgumentTypeError("must be a non-negative number of seconds")
    return seconds


def _token(parser: argparse.ArgumentParser, path: str | None) -> str | None:
    if path is None:
        # The client's own environment, not server configuration (config.py is the server's).
        return os.environ.get(TOKEN_VARIABLE, "").strip() or None
    try:
        with open(path, encoding="utf-8") as file:
            token = file.read().strip()
    except (OSError, UnicodeDecodeError) as exc:
        parser.error(f"--token-file: cannot read {path}: {exc}")
    if not token or any(c in token for c in "\r\n\0"):
        parser.error(f"--token-file: {path} does not hold one token")
    return token


def _report(status: client.Status) -> None:
    if status.state == "reconnecting":
        last = "none" if status.last_id is None else status.last_id
        print(
            f"streamapp: reconnecting after {_clean(status.reason or '')}, last id {last}"
            f" (next try in {status.delay or 0:.1f} s)",
            file=sys.stderr,
            flush=True,
        )


class _Printer:
    """Text chunks as a console log, other events as one readable line each, or JSON lines."""

    def __init__(self, out: t.TextIO, json_lines: bool) -> None:
        self.out, self.json_lines, self.mid_line = out, json_lines, False

    def event(self, event: client.Event) -> None:
        if self.json_lines:
            self.out.write(json.dumps(_as_json(event)) + "\n")
        elif event.text is not None:
            self.out.write(event.text)
            self.mid_line = not event.text.endswith("\n")
        else:
            self.end_line()
            self.out.write(_clean(_one_line(event)) + "\n")
        self.out.flush()

    def end_line(self) -> None:
        if self.mid_line:
            self.out.write("\n")
            self.out.flush()
            self.mid_line = False


def _as_json(event: client.Event) -> dict[str, t.Any]:
    if event.envelope is not None:
        return event.envelope
    if event.text is not None:
        return {"type": event.type, "data": {"content": event.text}}
    return {"id": event.id, "type": event.type, "data": event.data}


def _one_line(event: client.Event) -> str:
    """``#12 workflow_status RUNNING``, ``#13 tool_call search SUCCESS 120 ms``, …"""
    data = event.data if isinstance(event.data, dict) else {}
    kind = event.type
    if kind.endswith("_status"):
        task = f"task {data['task_id']}" if data.get("task_id") else None
        parts = [data.get("status"), task, data.get("reason")]
    elif kind == "workflow_start":
        parts = [data.get("workflow_id")]
    elif kind == "tool_call":
        took = f"{data['duration_ms']} ms" if data.get("duration_ms") is not None else None
        parts = [data.get("tool_name"), data.get("status"), took, _short(data.get("error"))]
    elif kind == "structured_delta":
        parts = [data.get("sequence"), _short(data.get("content"))]
    elif kind == "warning":
        parts = [f"{data.get('code')}:", data.get("message")]
    elif kind == "complete":
        parts = [data.get("status"), _short(data.get("output"))]
    elif kind == "error":
        raw = data.get("error")
        error = raw if isinstance(raw, dict) else {}
        code = f"({error['code']})" if error.get("code") else None
        parts = [data.get("status"), error.get("message"), code]
    elif kind == "stream_reset":
        parts = [data.get("reason"), f"newest {data.get('newest_id')}", f"oldest {data.get('oldest_id')}"]
    else:
        parts = [_short(event.data)]
    head = kind if event.id is None else f"#{event.id} {kind}"
    return " ".join([head, *(str(part) for part in parts if part not in (None, ""))])


def _short(value: t.Any) -> str | None:
    if value is None:
        return None
    text = value if isinstance(value, str) else json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    return text if len(text) <= _LONG else text[: _LONG - 1] + "…"


def _clean(text: str) -> str:
    """One line, with control characters escaped: event values come from producers."""
    return _CONTROL.sub(lambda m: repr(m.group())[1:-1], text)
