"""A dashboard's connect: many executions on one multiplexed stream against one stream each (SPEC §5.6).

``--execs`` workflows of ``--events`` stored catalog events each, every one ended (``complete``
last), one gunicorn worker with its access log off. Each round reads the whole history of all
of them three ways, on new connections, and times it to the last byte:

* one ``GET /streams?ids=…`` listing every execution (the multiplexed stream ends by itself
  once every execution's terminal event is sent);
* one ``GET …/stream`` per execution, one after another;
* the same, six at a time: what a browser's six connections per origin allow.

Prints p50 / p95 of each, the multiplexed stream's time to its first event, the worker's CPU
per dashboard, and checks that every way delivered every event once.

Then, live: ``--dashboards`` dashboards of the same ``--execs`` running executions, each one
multiplexed stream, then (on new executions) each one stream per execution, while ``--rate``
events/s are appended over them round-robin through the Python producer API for ``--seconds``:
append → frame received p50 / p99 (each event carries its ``time.time_ns()``), every event once
and in order per execution, and the worker's CPU, side by side.

    PYTHONPATH=. .venv/bin/python -m bench.multiplex
    PYTHONPATH=. .venv/bin/python -m bench.multiplex --execs 20 --events 50
    PYTHONPATH=. .venv/bin/python -m bench.multiplex --profile
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import selectors
import socket
import threading
import time
import typing as t
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from streamapp import sse
from streamapp.producer import Producer

from . import harness
from . import spy
from . import wire

BROWSER_CONNECTIONS = 6


def _events(items: list[sse.Item]) -> collections.Counter[str]:
    """Durable events per execution, from their envelopes."""
    seen: collections.Counter[str] = collections.Counter()
    for item in items:
        if isinstance(item, sse.Message) and item.id is not None:
            seen[json.loads(item.data)["exec_id"]] += 1
    return seen


def measure(args: argparse.Namespace, pg: harness.Postgres, tmp: Path, stack: contextlib.ExitStack) -> str:
    owner, token = pg.account()
    exec_ids = pg.executions(owner, args.execs, args.events, events=args.events)
    server = harness.Server(pg, tmp, {}, ["--access-logfile", "/dev/null"])
    stack.callback(server.stop)
    listed = "/api/v0/streams?ids=" + ",".join(f"workflows/{exec_id}" for exec_id in exec_ids)
    expected = dict.fromkeys(exec_ids, args.events)

    def multiplexed() -> float:
        reading = wire.read_stream(server.port, listed, token, timeout=60)
        if reading.status != 200 or dict(_events(reading.items)) != expected:
            raise RuntimeError(f"/streams: status {reading.status}, {sum(_events(reading.items).values())} events")
        return reading.seconds

    def first_event() -> float:
        return wire.read_stream(server.port, listed, token, first_only=True, timeout=60).seconds

    def one(exec_id: str) -> None:
        reading = wire.read_stream(server.port, wire.stream_path(exec_id), token, timeout=60)
        if reading.status != 200 or len(wire.event_ids(reading.items)) != args.events:
            raise RuntimeError(f"{exec_id}: status {reading.status}")

    def one_each(parallel: int) -> float:
        started = time.perf_counter()
        with ThreadPoolExecutor(parallel) as pool:
            list(pool.map(one, exec_ids))
        return time.perf_counter() - started

    ways: dict[str, Callable[[], float]] = {
        f"GET /streams listing all {args.execs}": multiplexed,
        f"GET /streams listing all {args.execs}: first event": first_event,
        "one GET …/stream per execution, one after another": lambda: one_each(1),
        f"one GET …/stream per execution, {BROWSER_CONNECTIONS} at a time": lambda: one_each(BROWSER_CONNECTIONS),
    }
    if args.profile:
        # The multiplexed connect alone, for as many rounds as the timed loop has.
        samples = Path(args.profile) if isinstance(args.profile, str) else tmp / "spy.txt"
        profiler = spy.record(server.worker.pid, 5, samples, rate=400)
        end = time.monotonic() + 5
        while time.monotonic() < end:
            multiplexed()
        if profiler is not None:
            profiler.wait(harness.WAIT_S)
            top = harness.table(
                ["function (py-spy, inclusive, % of the worker's samples)", "share"],
                [[name, f"{share:.1f}%"] for name, share in spy.top(samples, 40)],
            )
    times: dict[str, list[float]] = {name: [] for name in ways}
    cpu: dict[str, float] = dict.fromkeys(ways, 0.0)
    for way in ways.values():
        way()  # warm up
    for _ in range(args.rounds):
        for name, way in ways.items():  # interleaved: a busy moment of the machine hits every way
            before = sum(server.worker.cpu_times()[:2])
            times[name].append(way() * 1000.0)
            cpu[name] += sum(server.worker.cpu_times()[:2]) - before
    rows = [
        [
            name,
            f"{harness.percentile(values, 50):.1f}",
            f"{harness.percentile(values, 95):.1f}",
            f"{cpu[name] / args.rounds * 1000.0:.1f}",
        ]
        for name, values in times.items()
    ]
    title = f"{args.execs} ended executions of {args.events} events each, read whole ({args.rounds} rounds)"
    text = harness.table([title, "p50 ms", "p95 ms", "worker CPU ms"], rows)
    if args.profile:
        text += f"\n\n{top}"
    if args.dashboards:
        text += "\n\n" + _live_table(args, pg, server, owner, token)
    return text


class _Readers(threading.Thread):
    """Streams read on one thread (selectors): each event's delay from its ``t_ns`` to its arrival,
    and the ids each dashboard got, per execution, whether it reads one stream or many."""

    def __init__(self, port: int, token: str) -> None:
        super().__init__(daemon=True)
        self.port, self.token = port, token
        self.selector = selectors.DefaultSelector()
        self.delays_ms: list[float] = []
        self.ids: dict[int, dict[str, list[int]]] = collections.defaultdict(lambda: collections.defaultdict(list))
        self.heads = 0
        self.socks: list[socket.socket] = []

    def open(self, dashboard: int, path: str) -> None:
        sock = socket.create_connection((wire.HOST, self.port), timeout=30)
        sock.sendall(wire.stream_request(path, self.token, None))
        sock.setblocking(False)
        self.socks.append(sock)
        self.selector.register(sock, selectors.EVENT_READ, [dashboard, sse.Decoder(), wire.Dechunker(True), b""])

    def run(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            while True:
                for key, _ in self.selector.select(timeout=1):
                    self._read(key)

    def _read(self, key: selectors.SelectorKey) -> None:
        data = t.cast(socket.socket, key.fileobj).recv(1 << 16)
        now = time.time_ns()
        state = key.data
        if not data:
            self.selector.unregister(key.fileobj)
            return
        if state[3] is not None:  # the response head is still coming
            state[3] += data
            parsed = wire.split_head(state[3])
            if parsed is None:
                return
            state[3], data = None, parsed[2]
            self.heads += 1
        for item in state[1].feed(state[2].feed(data)):
            if isinstance(item, sse.Message) and item.id is not None:
                envelope = json.loads(item.data)
                self.ids[state[0]][envelope["exec_id"]].append(envelope["id"])
                self.delays_ms.append((now - envelope["data"]["t_ns"]) / 1e6)

    def close(self) -> None:
        for sock in self.socks:
            wire.reset(sock)


def _live(
    args: argparse.Namespace, pg: harness.Postgres, server: harness.Server, owner: str, token: str, many: bool
) -> list[str]:
    """``--dashboards`` dashboards of the same ``--execs`` running executions, each one multiplexed
    stream (``many``) or one stream per execution, while ``--rate`` events/s are appended over them,
    round-robin, through the Python producer API; the figures of one column."""
    exec_ids = pg.executions(owner, args.execs, 0)
    readers = _Readers(server.port, token)
    for dashboard in range(args.dashboards):
        if many:
            readers.open(dashboard, "/api/v0/streams?ids=" + ",".join(f"workflows/{e}" for e in exec_ids))
        else:
            for exec_id in exec_ids:
                readers.open(dashboard, wire.stream_path(exec_id))
    streams = len(readers.socks)
    readers.start()
    end = time.monotonic() + 60
    while readers.heads < streams and time.monotonic() < end:
        time.sleep(0.05)
    time.sleep(1)
    producer = Producer(pg.db)
    count = int(args.rate * args.seconds)
    before = sum(server.worker.cpu_times()[:2])
    started = time.monotonic()
    for n in range(count):
        time.sleep(max(0.0, started + n / args.rate - time.monotonic()))
        producer.append_events(exec_ids[n % len(exec_ids)], [{"type": "progress", "data": {"t_ns": time.time_ns()}}])
    time.sleep(2)
    cpu = sum(server.worker.cpu_times()[:2]) - before
    readers.close()
    per_exec = {
        e: list(range(1, count // len(exec_ids) + (i < count % len(exec_ids)) + 1)) for i, e in enumerate(exec_ids)
    }
    expected = {k: v for k, v in per_exec.items() if v}
    correct = sum(dict(readers.ids[dashboard]) == expected for dashboard in range(args.dashboards))
    delays = readers.delays_ms
    return [
        f"{streams:,}",
        f"{harness.percentile(delays, 50):.2f} / {harness.percentile(delays, 99):.2f}",
        f"{len(delays):,} of {count * args.dashboards:,}",
        f"{correct} of {args.dashboards}",
        f"{cpu:.2f} ({cpu / max(1, len(delays)) * 1e6:.0f})",
    ]


def _live_table(args: argparse.Namespace, pg: harness.Postgres, server: harness.Server, owner: str, token: str) -> str:
    columns = [_live(args, pg, server, owner, token, many) for many in (True, False)]
    labels = [
        "streams open",
        "append → frame received, p50 / p99 ms",
        "frames received",
        "dashboards with every event once, in order",
        "worker CPU s (µs per frame)",
    ]
    title = (
        f"{args.dashboards} dashboards of the same {args.execs} executions, "
        f"{args.rate:g} events/s for {args.seconds:g} s"
    )
    header = [title, "one multiplexed stream each", f"{args.execs} streams each"]
    return harness.table(header, [[label, *(column[n] for column in columns)] for n, label in enumerate(labels)])


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bench.multiplex", description=__doc__.split("\n\n")[0])
    p.add_argument("--execs", type=int, default=100, help="executions on the dashboard (100, the most a stream lists)")
    p.add_argument("--events", type=int, default=10, help="stored events of each (10)")
    p.add_argument("--rounds", type=int, default=20, help="timed rounds of each way (20)")
    p.add_argument("--dashboards", type=int, default=20, help="live phase: streams of the same list (20; 0: none)")
    p.add_argument("--rate", type=float, default=200.0, help="live phase: events/s over the list (200)")
    p.add_argument("--seconds", type=float, default=5.0, help="live phase: seconds of appends (5)")
    harness.profile_option(p, "through 5 s of multiplexed connects")
    return p


def main(argv: list[str] | None = None) -> int:
    return harness.run("multiplex", parser(), measure, argv)


if __name__ == "__main__":
    raise SystemExit(main())
