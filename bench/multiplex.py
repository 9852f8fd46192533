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

Then, live: ``--dashboards`` multiplexed streams listing the same ``--execs`` running
executions, while ``--rate`` events/s are appended over them round-robin through the Python
producer API for ``--seconds``: append → frame received p50 / p99 (each event carries its
``time.time_ns()``), every event once and in order per execution, and the worker's CPU.

    PYTHONPATH=. .venv/bin/python -m bench.multiplex
    PYTHONPATH=. .venv/bin/python -m bench.multiplex --execs 20 --events 50
    PYTHONPATH=. .venv/bin/python -m bench.multiplex --profile
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import socket
import threading
import time
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
        text += "\n\n" + _live(args, pg, server, owner, token)
    return text


class _Dashboard(threading.Thread):
    """One multiplexed stream read on a thread: each event's delay from its ``t_ns`` to its arrival."""

    def __init__(self, port: int, path: str, token: str) -> None:
        super().__init__(daemon=True)
        self.sock = socket.create_connection((wire.HOST, port), timeout=30)
        self.sock.sendall(wire.stream_request(path, token, None))
        self.delays_ms: list[float] = []
        self.ids: dict[str, list[int]] = collections.defaultdict(list)
        self.open = threading.Event()

    def run(self) -> None:
        decoder, dechunker, head = sse.Decoder(), wire.Dechunker(True), b""
        with contextlib.suppress(OSError):
            while data := self.sock.recv(1 << 16):
                now = time.time_ns()
                if not self.open.is_set():
                    head += data
                    parsed = wire.split_head(head)
                    if parsed is None:
                        continue
                    self.open.set()
                    data = parsed[2]
                for item in decoder.feed(dechunker.feed(data)):
                    if isinstance(item, sse.Message) and item.id is not None:
                        envelope = json.loads(item.data)
                        self.ids[envelope["exec_id"]].append(envelope["id"])
                        self.delays_ms.append((now - envelope["data"]["t_ns"]) / 1e6)


def _live(args: argparse.Namespace, pg: harness.Postgres, server: harness.Server, owner: str, token: str) -> str:
    """``--dashboards`` streams listing the same ``--execs`` running executions while ``--rate``
    events/s are appended over them, round-robin, through the Python producer API."""
    exec_ids = pg.executions(owner, args.execs, 0)
    path = "/api/v0/streams?ids=" + ",".join(f"workflows/{exec_id}" for exec_id in exec_ids)
    dashboards = [_Dashboard(server.port, path, token) for _ in range(args.dashboards)]
    for dashboard in dashboards:
        dashboard.start()
        dashboard.open.wait(30)
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
    for dashboard in dashboards:
        wire.reset(dashboard.sock)
    per_exec = {
        exec_id: list(range(1, count // len(exec_ids) + (i < count % len(exec_ids)) + 1))
        for i, exec_id in enumerate(exec_ids)
    }
    correct = sum(dict(dashboard.ids) == {k: v for k, v in per_exec.items() if v} for dashboard in dashboards)
    delays = [delay for dashboard in dashboards for delay in dashboard.delays_ms]
    title = (
        f"{args.dashboards} multiplexed streams of the same {args.execs} executions, "
        f"{args.rate:g} events/s for {args.seconds:g} s"
    )
    return harness.table(
        [title, "value"],
        [
            [
                "append → frame received, p50 / p99 ms",
                f"{harness.percentile(delays, 50):.2f} / {harness.percentile(delays, 99):.2f}",
            ],
            ["frames received", f"{len(delays):,} of {count * args.dashboards:,}"],
            ["streams with every event once, in order", f"{correct} of {args.dashboards}"],
            ["worker CPU s, and per 1,000 frames", f"{cpu:.2f} / {cpu / max(1, len(delays)) * 1000:.3f}"],
        ],
    )


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
