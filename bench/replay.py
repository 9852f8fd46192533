"""Replay: one client reads a long stored execution from id 0 to its end (SPEC §8: ≥ 1.2 × the best peer).

``--events`` catalog events (100,000; ``complete`` last) are stored through the Python
producer in batches, then ``ANALYZE`` runs (as autovacuum soon would; ``--no-analyze``
skips it), as in the comparison bench. Each run opens one stream from
``Last-Event-ID: 0`` and reads raw bytes until the server closes it after ``complete``;
the clock stops at the last byte, and only then is the body parsed (``streamapp.sse``)
and checked: ids 1..N once each, in order.

    PYTHONPATH=. .venv/bin/python -m bench.replay
    PYTHONPATH=. .venv/bin/python -m bench.replay --events 20000 --runs 3
"""

from __future__ import annotations

import argparse
import contextlib
from pathlib import Path

from streamapp import sse
from streamapp.producer import Producer

from . import harness
from . import wire


def measure(args: argparse.Namespace, pg: harness.Postgres, tmp: Path, stack: contextlib.ExitStack) -> str:
    owner, token = pg.account()
    (exec_id,) = pg.executions(owner, 1, 0)
    producer, total = Producer(pg.db), args.events
    harness.log(f"storing {total:,} events")
    for first in range(1, total + 1, args.batch):
        batch = range(first, min(total, first + args.batch - 1) + 1)
        producer.append_events(exec_id, [wire.catalog_event(j, total) for j in batch])
    if args.analyze:
        with pg.db.autocommit() as cur:
            cur.execute("ANALYZE events")
    server = harness.Server(pg, tmp, dict(kv.split("=", 1) for kv in args.env))
    stack.callback(server.stop)
    path = wire.stream_path(exec_id)
    wire.read_stream(server.port, path, token, first_only=True)  # warm-up
    rows, rates = [], []
    for run in range(1, args.runs + 1):
        with harness.Cpu(server=server.processes, postgres=pg.processes) as cpu:
            reading = wire.read_stream(server.port, path, token, timeout=300)
        ids = wire.event_ids(reading.items)
        last = reading.items[-1] if reading.items else None
        correct = ids == list(range(1, total + 1)) and isinstance(last, sse.Message) and last.type == "complete"
        rate = len(ids) / reading.seconds if reading.seconds else 0.0
        rates.append(rate)
        harness.log(f"  run {run}: {len(ids):,} events in {reading.seconds * 1000:,.0f} ms, {rate:,.0f} events/s")
        rows.append(
            [
                str(run),
                f"{rate:,.0f}",
                f"{reading.seconds * 1000:,.0f}",
                "yes" if correct else f"no: status {reading.status}, {len(ids):,} ids",
                cpu.row(),
            ]
        )
    rows.append(["median", f"{harness.percentile(rates, 50):,.0f}", "", "", ""])
    rows.append(["server log lines with an error", str(len(server.errors())), "", "", ""])
    title = (
        f"Replay of {total:,} stored catalog events from id 0 to one client, one gunicorn worker"
        f"{'' if args.analyze else ', without ANALYZE'}\n\n"
    )
    header = [
        "run",
        "events/s",
        "ms",
        "ids 1..N once each, in order, complete last",
        "CPU s: server / PostgreSQL; machine busy of wall × cores",
    ]
    return title + harness.table(header, rows)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bench.replay", description=__doc__.split("\n\n")[0])
    p.add_argument("--events", type=int, default=100_000, help="events stored and replayed (100,000)")
    p.add_argument("--runs", type=int, default=5, help="timed replays (5)")
    p.add_argument("--batch", type=int, default=500, help="events per stored batch (500)")
    p.add_argument("--no-analyze", dest="analyze", action="store_false", help="skip ANALYZE after storing")
    p.add_argument("--env", action="append", default=[], metavar="KEY=VALUE", help="a server setting; repeatable")
    return p


def main(argv: list[str] | None = None) -> int:
    return harness.run("replay", parser(), measure, argv)


if __name__ == "__main__":
    raise SystemExit(main())
