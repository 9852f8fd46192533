"""Load process: holds many SSE streams under gevent and reports what arrived (``python -m bench.load``).

Started by ``harness.Child``: the first stdin line is the config, each later line a
command answered by one JSON line on stdout; stdin closing ends the process.

* ``streams`` (fanout): one stream per entry of ``exec_ids``, each from ``Last-Event-ID: 0``,
  at most ``connect_concurrency`` handshakes in flight. A stream is ready once it has
  replayed the stored history and done at ``complete``; an event's latency is its receive
  time minus the ``t_pub_ns`` its publisher put in its data. Commands: ``status``, ``result``.
* ``chunks``: ``streams`` streams on one agent execution. Between ``begin`` and ``end``
  each keeps the raw bytes it receives with their receive times and parses them at ``end``:
  parsing a few hundred thousand text chunks a second as they come would make this
  process the bottleneck. Commands: ``status``, ``begin``, ``progress``, ``end``.
"""

from __future__ import annotations

from gevent import monkey

monkey.patch_all()

import array  # noqa: E402
import json  # noqa: E402
import re  # noqa: E402
import signal  # noqa: E402
import socket  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import typing as t  # noqa: E402
import zlib  # noqa: E402

import gevent  # noqa: E402
import gevent.fileobject  # noqa: E402
import gevent.lock  # noqa: E402

from streamapp import sse  # noqa: E402

from . import wire  # noqa: E402

_T_PUB = re.compile(r'"t_pub_ns":\s*(\d+)')


class Stream:
    """One open stream: its socket after the response head, and what it received."""

    def __init__(self, exec_id: str) -> None:
        self.exec_id = exec_id
        self.status = 0
        self.error = ""
        self.sock: socket.socket | None = None
        self.dechunker = wire.Dechunker(True)
        self.decoder = sse.Decoder()

    def open(self, port: int, path: str, token: str, last_event_id: int | None, timeout: float) -> bytes:
        """Connect and read the response head; the body bytes that came with it."""
        sock = self.sock = socket.create_connection((wire.HOST, port), timeout=timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.sendall(wire.stream_request(path, token, last_event_id))
        raw = b""
        while (head := wire.split_head(raw)) is None:
            data = sock.recv(65536)
            if not data:
                raise ConnectionError("closed before the response head")
            raw += data
        self.status, self.dechunker.chunked, body = head
        if self.status != 200:
            self.error = f"http_{self.status}"
        return body

    def items(self, data: bytes) -> list[sse.Item]:
        return self.decoder.feed(self.dechunker.feed(data))


class Fanout:
    def __init__(self, cfg: dict[str, t.Any]) -> None:
        self.cfg = cfg
        self.history, self.events = cfg["history"], cfg["events"]
        self.streams = [Stream(e) for e in cfg["exec_ids"]]
        self.ids = [array.array("q") for _ in self.streams]
        self.latencies_us = array.array("q")
        self.ttfe_us = array.array("q")
        self.ready: set[int] = set()  # streams replayed up to the history, or failed
        self.completed = 0
        gate = gevent.lock.BoundedSemaphore(cfg.get("connect_concurrency", 128))
        self.greenlets = [gevent.spawn(self.follow, n, gate) for n in range(len(self.streams))]

    def follow(self, n: int, gate: gevent.lock.BoundedSemaphore) -> None:
        st, cfg = self.streams[n], self.cfg
        try:
            with gate:  # bound concurrent handshakes, not the streams
                started = time.perf_counter_ns()
                body = st.open(cfg["port"], wire.stream_path(st.exec_id), cfg["token"], 0, cfg["read_timeout_s"])
            while st.status == 200:
                now = time.time_ns()
                if any(self._take(n, item, started, now) for item in st.items(body)):
                    return
                assert st.sock is not None
                if not (body := st.sock.recv(65536)):
                    st.error = "ended_before_complete"
                    return
        except gevent.GreenletExit:
            st.error = "incomplete"
        except OSError as exc:
            st.error = type(exc).__name__
        finally:
            self.ready.add(n)  # done waiting for it, also when it failed or was refused
            if st.sock is not None:
                wire.reset(st.sock)

    def _take(self, n: int, item: sse.Item, started: int, now: int) -> bool:
        """Record one item of stream ``n``; True at ``complete``."""
        if not isinstance(item, sse.Message) or item.id is None:
            return False
        ids, event_id = self.ids[n], int(item.id)
        if not ids:
            self.ttfe_us.append((time.perf_counter_ns() - started) // 1000)
        ids.append(event_id)
        if event_id > self.history and (match := _T_PUB.search(item.data)):
            self.latencies_us.append((now - int(match.group(1))) // 1000)
        if event_id >= self.history:
            self.ready.add(n)
        if item.type == "complete":
            self.completed += 1
            return True
        return False

    def command(self, name: str, _: dict[str, t.Any]) -> dict[str, t.Any]:
        connected = sum(st.status == 200 for st in self.streams)
        if name == "status":
            return {"connected": connected, "ready": len(self.ready), "completed": self.completed}
        gevent.killall([g for g in self.greenlets if not g.dead], timeout=5)
        expected = array.array("q", range(1, self.events + 1))
        errors: dict[str, int] = {}
        correct = gaps = duplicates = out_of_order = 0
        for st, ids in zip(self.streams, self.ids, strict=True):
            if st.error:
                errors[st.error] = errors.get(st.error, 0) + 1
            seen = set(ids)
            correct += ids == expected
            duplicates += len(ids) - len(seen)
            gaps += sum(1 for i in range(1, max(seen, default=0)) if i not in seen)
            out_of_order += sum(1 for a, b in zip(ids, ids[1:], strict=False) if b <= a)
        return {
            "streams": len(self.streams),
            "connected": connected,
            "completed": self.completed,
            "correct": correct,
            "gaps": gaps,
            "duplicates": duplicates,
            "out_of_order": out_of_order,
            "errors": errors,
            "latencies_us": self.latencies_us.tolist(),
            "ttfe_us": self.ttfe_us.tolist(),
        }


class Chunks:
    def __init__(self, cfg: dict[str, t.Any]) -> None:
        self.cfg = cfg
        self.streams = [Stream(cfg["exec_id"]) for _ in range(cfg["streams"])]
        self.pieces: list[list[tuple[int, bytes]]] = [[] for _ in self.streams]
        self.received = 0  # body bytes since begin
        self.greenlets = [gevent.spawn(self.follow, n) for n in range(len(self.streams))]

    def follow(self, n: int) -> None:
        st, cfg = self.streams[n], self.cfg
        path = wire.stream_path(st.exec_id, "agents")
        try:
            body = st.open(cfg["port"], path, cfg["token"], None, cfg["read_timeout_s"])
            while st.status == 200:
                if body:
                    self.pieces[n].append((time.time_ns(), body))
                    self.received += len(body)
                assert st.sock is not None
                if not (body := st.sock.recv(1 << 18)):
                    st.error = "ended_by_server"
                    return
        except OSError as exc:
            st.error = type(exc).__name__
        finally:
            if st.sock is not None:
                wire.reset(st.sock)

    def parse(self, n: int) -> tuple[dict[str, t.Any], list[int]]:
        """What stream ``n`` received since the last parse, and the CRCs of its text chunks in order."""
        st, pieces = self.streams[n], self.pieces[n]
        self.pieces[n] = []
        crcs: list[int] = []
        timed: list[tuple[int, int]] = []
        out = {"bytes": 0, "first_ns": 0, "last_ns": 0, "dropped": 0, "with_id": 0, "other": 0}
        for now, data in pieces:
            for item in st.items(data):
                if isinstance(item, sse.Comment) and item.text.startswith("dropped "):
                    out["dropped"] += int(item.text.split()[1])
                if not isinstance(item, sse.Message):
                    continue
                if item.type != "llm_chunk":
                    out["other"] += 1
                    continue
                out["with_id"] += item.id is not None
                raw = item.data.encode()
                crcs.append(zlib.crc32(raw))
                out["bytes"] += len(raw)
                out["first_ns"] = out["first_ns"] or now
                out["last_ns"] = now
                if raw.startswith(b"T"):  # a timed chunk: T<send time ns> <seq> <text>
                    timed.append((int(raw[1 : raw.index(b" ")]), now))
        return {**out, "received": len(crcs), "timed": timed, "open": st.status == 200 and not st.error}, crcs

    def command(self, name: str, msg: dict[str, t.Any]) -> dict[str, t.Any]:
        if name == "status":
            got = [self.parse(n)[0]["received"] for n in range(len(self.streams))]
            errors = [st.error for st in self.streams if st.error]
            return {
                "open": sum(st.status == 200 and not st.error for st in self.streams),
                "errors": errors,
                "with_chunk": sum(g > 0 for g in got),
            }
        if name == "begin":
            for n in range(len(self.streams)):
                self.parse(n)
            self.received = 0
            return {"ok": True}
        if name == "progress":
            return {"bytes": self.received}
        sent = msg["sent"]  # the CRCs of the chunks published, in order
        results = []
        for n in range(len(self.streams)):
            figures, crcs = self.parse(n)
            missing = _count_missing(sent, crcs)
            results.append(
                {**figures, "equal": crcs == sent, "lost": missing, "foreign": len(crcs) - len(sent) + missing}
            )
        return {"streams": results}


def _count_missing(sent: list[int], got: list[int]) -> int:
    """How many of ``sent`` are not in ``got``, counting repeats (a multiset difference)."""
    left: dict[int, int] = {}
    for crc in got:
        left[crc] = left.get(crc, 0) + 1
    missing = 0
    for crc in sent:
        if left.get(crc):
            left[crc] -= 1
        else:
            missing += 1
    return missing


def main() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent stops us (stdin closes) on Ctrl-C
    stdin = gevent.fileobject.FileObjectPosix(sys.stdin.fileno(), "rb", close=False)
    cfg = json.loads(stdin.readline())
    runner: Fanout | Chunks = Fanout(cfg) if cfg["mode"] == "streams" else Chunks(cfg)
    for line in stdin:
        msg = json.loads(line)
        sys.stdout.write(json.dumps(runner.command(msg["command"], msg)) + "\n")
        sys.stdout.flush()
    gevent.killall(runner.greenlets, timeout=5)


if __name__ == "__main__":
    main()
