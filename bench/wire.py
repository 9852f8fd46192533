"""The client side of the wire: catalog events, stream requests, chunked bodies, one blocking reader.

No gevent and no I/O at import: the parent bench process and the gevent load
processes both use it. SSE itself is parsed by ``streamapp.sse``, the package's
one parser; this module only undoes HTTP/1.1 framing around it.
"""

from __future__ import annotations

import dataclasses
import socket
import struct
import time
import typing as t

from streamapp import sse

HOST = "127.0.0.1"
API = "/api/v0/executions"


def catalog_event(j: int, k: int) -> dict[str, t.Any]:
    """The j-th event (1-based) of an execution of k events: what a workflow sends (SPEC §4).

    The same sequence the comparison bench publishes (``../shared/bench``): a start,
    a status, tool calls with an output, and ``complete`` last.
    """
    if j == k:
        return {"type": "complete", "data": {"status": "SUCCESS"}}
    if j == 1:
        return {"type": "workflow_start", "data": {"workflow_id": "bench"}}
    if j == 2:
        return {"type": "workflow_status", "data": {"status": "RUNNING"}}
    return {
        "type": "tool_call",
        "data": {"tool_call_id": f"call-{j}", "tool_name": "bench_tool", "status": "SUCCESS", "output": {"n": j}},
    }


def stream_path(exec_id: str, segment: str = "workflows") -> str:
    return f"{API}/{segment}/{exec_id}/stream"


def stream_request(path: str, token: str, last_event_id: int | None = 0, *, close: bool = False) -> bytes:
    """A GET for one stream; ``close`` asks the server to close the connection after the body."""
    lines = [f"GET {path} HTTP/1.1", f"Host: {HOST}", f"Authorization: Bearer {token}", "Accept: text/event-stream"]
    if last_event_id is not None:
        lines.append(f"Last-Event-ID: {last_event_id}")
    if close:
        lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def split_head(raw: bytes) -> tuple[int, bool, bytes] | None:
    """(status, chunked, the body bytes after the head), or None while the head is incomplete."""
    end = raw.find(b"\r\n\r\n")
    if end < 0:
        return None
    head = raw[:end].decode("latin-1")
    return int(head.split(" ", 2)[1]), "transfer-encoding: chunked" in head.lower(), raw[end + 4 :]


class Dechunker:
    """Undoes HTTP/1.1 chunked transfer coding incrementally; a plain body passes through."""

    def __init__(self, chunked: bool) -> None:
        self.chunked = chunked
        self.done = False
        self._rest = b""
        self._left = 0  # data bytes of the current chunk still to come
        self._crlf = 0  # bytes of the CRLF after a chunk's data still to skip

    def feed(self, data: bytes) -> bytes:
        if not self.chunked:
            return data
        buf = self._rest + data if self._rest else data
        out: list[bytes] = []
        pos, end = 0, len(buf)
        while pos < end and not self.done:
            if self._left:
                take = min(self._left, end - pos)
                out.append(buf[pos : pos + take])
                pos += take
                self._left -= take
                self._crlf = 0 if self._left else 2
            elif self._crlf:
                take = min(self._crlf, end - pos)
                pos += take
                self._crlf -= take
            else:
                line_end = buf.find(b"\r\n", pos)
                if line_end < 0:
                    break
                self._left = int(buf[pos:line_end].split(b";", 1)[0], 16)
                self.done = self._left == 0
                pos = line_end + 2
        self._rest = buf[pos:]
        return b"".join(out)


def event_ids(items: t.Iterable[sse.Item]) -> list[int]:
    """The ids of the messages that carried one (text chunks carry none)."""
    return [int(m.id) for m in items if isinstance(m, sse.Message) and m.id is not None]


def reset(sock: socket.socket) -> None:
    """Close with a RST: a stream the bench is done with need not linger half-closed on the server."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    sock.close()


@dataclasses.dataclass
class Reading:
    status: int
    #: From before the TCP connect to the first event frame (``first_only``) or to the last byte.
    seconds: float
    items: list[sse.Item]


def read_stream(
    port: int, path: str, token: str, last_event_id: int = 0, *, first_only: bool = False, timeout: float = 60.0
) -> Reading:
    """Open one stream on a new connection; read to its first event (``first_only``) or to its end.

    A whole stream is taken in as raw bytes and parsed after the clock stops, so a
    replay's figure is the server's and not the parser's.
    """
    deadline = time.monotonic() + timeout
    started = time.perf_counter()
    raw = bytearray()
    with socket.create_connection((HOST, port), timeout=timeout) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.sendall(stream_request(path, token, last_event_id, close=not first_only))
        parsed: tuple[int, bool, bytes] | None = None
        decoder, dechunker = sse.Decoder(), Dechunker(True)
        items: list[sse.Item] = []
        last = started
        while time.monotonic() < deadline:
            data = sock.recv(1 << 20)
            if not data:
                break
            last = time.perf_counter()
            if not first_only:
                raw += data
                continue
            if parsed is None:
                raw += data
                parsed = split_head(bytes(raw))
                if parsed is None:
                    continue
                if parsed[0] != 200:
                    return Reading(parsed[0], last - started, [])
                dechunker.chunked = parsed[1]
                data = parsed[2]
            items += decoder.feed(dechunker.feed(data))
            if any(isinstance(m, sse.Message) and m.id is not None for m in items):  # a token id too
                reset(sock)
                return Reading(200, last - started, items)
        else:
            raise TimeoutError(f"{path}: no end within {timeout:.0f} s")
    if first_only:
        return Reading(parsed[0] if parsed else 0, last - started, items)
    parsed = split_head(bytes(raw))
    if parsed is None:
        return Reading(0, last - started, [])
    body = Dechunker(parsed[1]).feed(parsed[2])
    return Reading(parsed[0], last - started, sse.decode(body))
