"""Fan-out: N streams over M executions while catalog events arrive one per authenticated POST (SPEC §8).

The load of the comparison bench (``../shared/bench``), against one gunicorn worker:

1. M workflows, each with its first H events stored (``--history``, 5).
2. One stream opened and read to its first event (warm-up); the server's RSS then is the baseline.
3. Load processes (``bench.load``) open N streams from ``Last-Event-ID: 0``, round-robin over the
   executions, at most 128 handshakes in flight each: **TTFE connect burst**. With all N open,
   ``--probes`` sequential extra streams time connect → first event: **TTFE at N open**.
4. After ``--settle`` s idle: RSS again; **KiB per stream** = the growth ÷ streams connected.
5. The publisher (``bench.publisher``) appends events H+1..K of every execution, one catalog event
   (``workflow_start``, ``workflow_status``, ``tool_call`` with ``output``, ``complete`` last) per
   authenticated POST, in order per execution, at ``--rate`` events/s in all; each event's data
   carries ``t_pub_ns`` taken just before its POST. **publish → receive** = receive time − t_pub_ns,
   so it includes the POST and its commit. **POSTs/s achieved** shows a server that fell behind.
6. Correct: a stream got ids 1..K exactly once, in order, and ended at ``complete``.

CPU seconds (server tree, PostgreSQL tree, load processes, whole machine) run from before the
streams connect to the end of the drain. ``--profile FILE`` records the worker with py-spy
during the live phase.

    PYTHONPATH=. .venv/bin/python -m bench.fanout                        # 1,000 streams, 100 executions, 400/s
    PYTHONPATH=. .venv/bin/python -m bench.fanout --streams 200 --execs 20 --rate 100 --seconds 10
    PYTHONPATH=. .venv/bin/python -m bench.fanout --streams 100,1000,10000 --rate 100 --execs 1000
"""

from __future__ import annotations

import argparse
import contextlib
import math
import threading
import time
import typing as t
from pathlib import Path

import psutil

from . import harness
from . import spy
from . import wire
from .harness import percentile as pct


def _ms(values: t.Sequence[float], *qs: float) -> str:
    return " / ".join(f"{pct(values, q) / 1000:.2f}" if values else "–" for q in qs)


def _close(children: list[harness.Child]) -> None:
    for child in children:
        child.close()


class _PeakConnections:
    """The most database connections seen, sampled every 250 ms while the block runs."""

    def __init__(self, pg: harness.Postgres) -> None:
        self.pg, self.peak = pg, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.wait(0.25):
            self.peak = max(self.peak, self.pg.connections())

    def __enter__(self) -> _PeakConnections:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


class Point:
    """Every figure at N = n streams, on a server of its own."""

    def __init__(
        self, args: argparse.Namespace, pg: harness.Postgres, tmp: Path, stack: contextlib.ExitStack, n: int
    ) -> None:
        self.args, self.pg, self.tmp, self.n = args, pg, tmp, n
        owner, self.token = pg.account()
        self.exec_ids = pg.executions(owner, args.execs, args.history, events=args.events)
        env = dict(kv.split("=", 1) for kv in args.env)
        env.setdefault("STREAMAPP_MAX_STREAMS_PER_WORKER", str(max(12000, n + args.probes + 100)))
        harness.log(f"{n:,} streams over {args.execs} executions, {args.events} events each, {args.rate:g} events/s")
        self.server = harness.Server(pg, tmp, env)
        stack.callback(self.server.stop)
        self.children: list[harness.Child] = []
        stack.callback(_close, self.children)

    def _load(self) -> list[psutil.Process]:
        return [p for child in self.children for p in harness.tree(child.process.pid)]

    def _until(self, clients: list[harness.Child], done: t.Callable[[list[dict[str, t.Any]]], bool], s: float) -> None:
        end = time.monotonic() + s
        while not done([c.ask("status") for c in clients]) and time.monotonic() < end:
            time.sleep(0.2)

    def _open(self) -> list[harness.Child]:
        """Load processes holding the N streams, round-robin over the executions; once every one is ready."""
        args, n, started = self.args, self.n, time.monotonic()
        procs = max(1, math.ceil(n / args.streams_per_process))
        for share in range(procs):
            streams = [self.exec_ids[i % args.execs] for i in range(share, n, procs)]
            self.children.append(
                harness.Child(
                    "load",
                    {
                        "mode": "streams",
                        "port": self.server.port,
                        "token": self.token,
                        "exec_ids": streams,
                        "history": args.history,
                        "events": args.events,
                        "read_timeout_s": 60 + args.drain,
                        "connect_concurrency": 128,
                    },
                    self.tmp,
                )
            )
        clients = self.children[:]
        self._until(clients, lambda status: sum(s["ready"] for s in status) >= n, 60 + n / 50)
        harness.log(f"  streams ready in {time.monotonic() - started:.1f} s")
        return clients

    def _probes(self) -> list[float]:
        """µs from connect to the first event of ``--probes`` extra streams, one at a time."""
        out = []
        for i in range(self.args.probes):
            path = wire.stream_path(self.exec_ids[(i * 7919) % len(self.exec_ids)])
            with contextlib.suppress(OSError):
                reading = wire.read_stream(self.server.port, path, self.token, first_only=True, timeout=10)
                if reading.status == 200:
                    out.append(reading.seconds * 1e6)
        return out

    def _publish(self) -> dict[str, t.Any]:
        args = self.args
        live_s = args.execs * (args.events - args.history) / args.rate
        profiler = spy.record(self.server.worker.pid, live_s, self.tmp / "profile.txt") if args.profile else None
        publisher = harness.Child(
            "publisher",
            {
                "port": self.server.port,
                "token": self.token,
                "exec_ids": self.exec_ids,
                "history": args.history,
                "events": args.events,
                "rate": args.rate,
                "connections": min(args.execs, 128),
                "deadline_s": live_s * 2 + 30,
            },
            self.tmp,
        )
        self.children.append(publisher)
        live = publisher.receive(timeout=live_s * 2 + 60)
        if profiler is not None:
            profiler.wait(harness.WAIT_S)
            out = Path(args.profile)
            out = out if len(args.streams) == 1 else out.with_name(f"{out.stem}-{self.n}{out.suffix}")
            out.write_bytes((self.tmp / "profile.txt").read_bytes())
            harness.log(
                "  py-spy, worker, live phase (inclusive share of samples):\n"
                + "\n".join(f"    {share:5.1f}%  {name}" for name, share in spy.top(out, 25))
            )
        return live

    def run(self) -> list[str]:
        server = self.server
        wire.read_stream(server.port, wire.stream_path(self.exec_ids[0]), self.token, first_only=True)  # warm-up
        time.sleep(1.0)
        rss0, before = server.rss(), server.metrics()
        with harness.Cpu(server=server.processes, postgres=self.pg.processes, load=self._load) as cpu:
            clients = self._open()
            probes = self._probes()
            time.sleep(self.args.settle)
            rss_n, idle = server.rss(), self.pg.connections()
            with _PeakConnections(self.pg) as connections:
                live = self._publish()
                self._until(
                    clients, lambda status: sum(s["completed"] - s["connected"] for s in status) >= 0, self.args.drain
                )
            results = [c.ask("result") for c in clients]
        after = server.metrics()
        _close(self.children)
        server.stop()
        if self.args.server_log:
            out = Path(self.args.server_log)
            out = out if len(self.args.streams) == 1 else out.with_name(f"{out.stem}-{self.n}{out.suffix}")
            out.write_bytes(server.log_path.read_bytes())
        total = {
            key: sum(r[key] for r in results)
            for key in ("connected", "completed", "correct", "gaps", "duplicates", "out_of_order")
        }
        errors: dict[str, int] = {}
        for r in results:
            for name, count in r["errors"].items():
                errors[name] = errors.get(name, 0) + count
        latencies = [v for r in results for v in r["latencies_us"]]

        def delta(name: str) -> float:
            return after.get(name, 0.0) - before.get(name, 0.0)

        args, appends = self.args, delta("streamapp_appends_total")
        expected = total["connected"] * (args.events - args.history)
        per_stream = (rss_n - rss0) / 1024 / max(1, total["connected"])
        return [
            f"{total['correct']:,} / {self.n:,} ({total['connected']:,} connected, {total['completed']:,} completed)",
            f"{total['gaps']} / {total['duplicates']} / {total['out_of_order']}; errors {errors or 'none'}",
            _ms([v for r in results for v in r["ttfe_us"]], 50, 95),
            _ms(probes, 50, 95) + f" ({len(probes)} of {args.probes})",
            _ms(latencies, 50, 99) + f" (max {max(latencies, default=0) / 1000:,.0f}; "
            f"{len(latencies):,} of {expected:,} deliveries)",
            f"{live['ok'] / live['seconds']:,.0f} of {args.rate:g} ({live['ok']:,} of {live['sent']:,} answered 201)",
            _ms(live["post_us"], 50, 99) + f"; late sends {len(live['late_us']):,}",
            f"{per_stream:.1f} ({rss0 / 2**20:.0f} → {rss_n / 2**20:.0f} MiB)",
            cpu.row(),
            f"{idle} / {max(idle, connections.peak)}",
            f"{delta('streamapp_event_reads_total') / appends:.2f}; "
            f"{delta('streamapp_safety_checks_total') / cpu.wall:.1f}"
            if appends
            else "–",
            f"{len(server.errors())}",
        ]


ROWS = (
    "streams correct / asked: ids 1..K once each, in order, ended at complete",
    "… gaps / duplicates / out of order; stream errors",
    "TTFE connect burst, p50 / p95 ms",
    "TTFE at N open, resumed from id 0 with history, p50 / p95 ms",
    "publish → receive, p50 / p99 ms",
    "POSTs/s achieved of the rate asked",
    "POST round trip, p50 / p99 ms",
    "KiB per stream (server RSS, master + worker)",
    "CPU s: server / PostgreSQL / load processes; machine busy of wall × cores",
    "database connections, idle / peak while publishing",
    "database reads per committed event (the worker's counters); safety checks/s",
    "server log lines with an error",
)


def measure(args: argparse.Namespace, pg: harness.Postgres, tmp: Path, stack: contextlib.ExitStack) -> str:
    if args.seconds:
        args.events = args.history + max(1, math.ceil(args.rate * args.seconds / args.execs))
    columns = [Point(args, pg, tmp, stack, n).run() for n in args.streams]
    header = ["figure", *(f"{n:,} streams" for n in args.streams)]
    title = (
        f"{args.execs:,} executions × {args.events} catalog events ({args.history} stored before the streams "
        f"open), {args.rate:g} events/s, one authenticated POST each; one gunicorn worker\n\n"
    )
    return title + harness.table(header, [[name, *(c[i] for c in columns)] for i, name in enumerate(ROWS)])


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bench.fanout", description=__doc__.split("\n\n")[0])
    counts = lambda s: [int(x) for x in s.split(",") if x.strip()]  # noqa: E731
    p.add_argument("--streams", type=counts, default=[1000], help="open streams; a list gives one column each (1000)")
    p.add_argument("--execs", type=int, default=100, help="executions the streams spread over (100)")
    p.add_argument("--events", type=int, default=50, help="events per execution, K, complete last (50)")
    p.add_argument("--seconds", type=float, help="instead of --events: publish for about this long")
    p.add_argument("--history", type=int, default=5, help="events stored before the streams open (5)")
    p.add_argument("--rate", type=float, default=400, help="events/s POSTed, all executions together (400)")
    p.add_argument("--probes", type=int, default=100, help="TTFE probes once all streams are open (100)")
    p.add_argument("--settle", type=float, default=2.0, help="idle seconds before RSS is read (2)")
    p.add_argument("--drain", type=float, default=30.0, help="longest wait for the last deliveries (30)")
    p.add_argument("--streams-per-process", type=int, default=2500, help="streams per load process (2500)")
    p.add_argument("--env", action="append", default=[], metavar="KEY=VALUE", help="a server setting; repeatable")
    p.add_argument(
        "--server-log",
        metavar="FILE",
        help="keep gunicorn's log (stdout and stderr) in FILE (FILE-N for each N of a list)",
    )
    p.add_argument(
        "--profile",
        metavar="FILE",
        help="py-spy the worker while publishing; raw samples to FILE (FILE-N for each N of a list)",
    )
    return p


def main(argv: list[str] | None = None) -> int:
    return harness.run("fanout", parser(), measure, argv)


if __name__ == "__main__":
    raise SystemExit(main())
