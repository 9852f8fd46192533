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

    PYTHONPATH=. .venv/bin/python -m bench.multiplex
    PYTHONPATH=. .venv/bin/python -m bench.multiplex --execs 20 --events 50
    PYTHONPATH=. .venv/bin/python -m bench.multiplex --profile
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from streamapp import sse

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
    return text if not args.profile else f"{text}\n\n{top}"


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bench.multiplex", description=__doc__.split("\n\n")[0])
    p.add_argument("--execs", type=int, default=100, help="executions on the dashboard (100, the most a stream lists)")
    p.add_argument("--events", type=int, default=10, help="stored events of each (10)")
    p.add_argument("--rounds", type=int, default=20, help="timed rounds of each way (20)")
    p.add_argument(
        "--profile",
        nargs="?",
        const=True,
        default=False,
        metavar="FILE",
        help="py-spy the worker through 5 s of multiplexed connects; raw samples kept in FILE when given",
    )
    return p


def main(argv: list[str] | None = None) -> int:
    return harness.run("multiplex", parser(), measure, argv)


if __name__ == "__main__":
    raise SystemExit(main())
