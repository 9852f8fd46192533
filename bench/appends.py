"""Appends/s through the Python producer API, one event per transaction, 1 / 8 / 32 producers (SPEC §8).

Each producer is a process of its own with one connection, appending catalog events to
an execution of its own for ``--seconds``, all starting at once. Modes, interleaved in
every round so that a busy moment of a shared machine hits them alike:

* ``own``: ``Producer(db).append_events`` in its own-transaction mode (the wake-up after the
  data commit, in the same round trip);
* ``none``: ``Producer(db, notify=False)``, the same transactions without any NOTIFY: the bound;
* ``in-txn`` (not by default): ``append_events(cur, …)`` inside the caller's transaction, the
  NOTIFY in it.

SPEC §8 asks ``own`` ≥ 90% of ``none`` at 32 producers. A gunicorn worker LISTENs meanwhile,
as in production.

    PYTHONPATH=. .venv/bin/python -m bench.appends
    PYTHONPATH=. .venv/bin/python -m bench.appends --producers 1,8 --seconds 3 --rounds 1
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing
import time
import typing as t
from collections.abc import Callable
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from pathlib import Path

from streamapp.db import Database
from streamapp.producer import Producer
from streamapp.producer import append_events

from . import harness
from . import wire

MODES = {
    "own": "Producer(db): own transaction",
    "none": "Producer(db, notify=False): no NOTIFY",
    "in-txn": "append_events(cur, …): NOTIFY inside the transaction",
}


def _producer(pipe: Connection, url: str) -> None:
    """A producer process: per point, warms up on its execution, then counts appends in the window it is given."""
    db = Database(url, 1, application_name=f"{harness.APP_NAME}-producer")
    try:
        while (job := pipe.recv()) is not None:
            mode, exec_id = job
            try:
                once = _appender(db, mode, exec_id)
                for _ in range(20):  # the connection, the caches
                    once()
                pipe.send("ready")
                start_at, seconds = pipe.recv()
                while time.monotonic() < start_at:
                    time.sleep(0.001)
                count, end = 0, start_at + seconds
                while time.monotonic() < end:
                    once()
                    count += 1
                pipe.send(count)
            except Exception as exc:  # reported to the parent, which stops
                pipe.send(f"{type(exc).__name__}: {exc}")
    finally:
        db.close()


def _appender(db: Database, mode: str, exec_id: str) -> Callable[[], None]:
    """One event per transaction, a new catalog event each time, in ``mode``."""
    producer = Producer(db, notify=mode == "own")
    j = 0

    def once() -> None:
        nonlocal j
        j += 1
        events = [wire.catalog_event(j, 0)]
        if mode == "in-txn":
            with db.transaction() as cur:
                append_events(cur, exec_id, events)
        else:
            producer.append_events(exec_id, events)

    return once


def _answers(pipes: list[Connection], timeout: float) -> list[t.Any]:
    answers = [p.recv() if p.poll(timeout) else "no answer" for p in pipes]
    if failed := [a for a in answers if isinstance(a, str) and a != "ready"]:
        raise RuntimeError(f"a producer failed: {failed[0]}")
    return answers


def measure(args: argparse.Namespace, pg: harness.Postgres, tmp: Path, stack: contextlib.ExitStack) -> str:
    owner, _ = pg.account()
    server = harness.Server(pg, tmp, {})
    stack.callback(server.stop)
    context = multiprocessing.get_context("spawn")
    pipes, processes = [], []
    for _ in range(max(args.producers)):
        parent, child = context.Pipe()
        process = context.Process(target=_producer, args=(child, pg.url), daemon=True)
        process.start()
        pipes.append(parent)
        processes.append(process)
    stack.callback(_stop, pipes, processes)
    rates: dict[tuple[int, str], list[float]] = {}
    cpu: dict[tuple[int, str], list[tuple[float, float]]] = {}
    for round_ in range(1, args.rounds + 1):
        for level in args.producers:
            for mode in args.modes:
                for pipe, exec_id in zip(pipes, pg.executions(owner, level, 0), strict=False):
                    pipe.send((mode, exec_id))
                _answers(pipes[:level], harness.WAIT_S)
                start_at = time.monotonic() + 0.2
                for pipe in pipes[:level]:
                    pipe.send((start_at, args.seconds))
                time.sleep(0.2)
                with harness.Cpu(postgres=pg.processes) as meter:
                    counts = _answers(pipes[:level], args.seconds + harness.WAIT_S)
                rate = sum(counts) / args.seconds
                rates.setdefault((level, mode), []).append(rate)
                share = (meter.seconds["postgres"] / meter.wall, meter.seconds["machine"] / meter.wall)
                cpu.setdefault((level, mode), []).append(share)
                harness.log(f"round {round_}: {level:>2} producers, {mode:<6} {rate:,.0f} appends/s")
    rows = []
    for level in args.producers:
        for mode in args.modes:
            values = rates[(level, mode)]
            pg_cores = harness.percentile([c[0] for c in cpu[(level, mode)]], 50)
            busy = harness.percentile([c[1] for c in cpu[(level, mode)]], 50)
            rows.append(
                [
                    str(level),
                    MODES[mode],
                    f"{harness.percentile(values, 50):,.0f}",
                    f"{min(values):,.0f}–{max(values):,.0f}",
                    f"{pg_cores:.2f}",
                    f"{busy:.2f}",
                ]
            )
        if {"own", "none"} <= set(args.modes):
            ratio = harness.percentile(rates[(level, "own")], 50) / harness.percentile(rates[(level, "none")], 50)
            rows.append([str(level), "**own ÷ none** (SPEC §8: ≥ 90% at 32)", f"**{ratio:.0%}**", "", "", ""])
    header = [
        "producers",
        "mode",
        f"appends/s, median of {args.rounds}",
        "range",
        "PostgreSQL cores",
        "machine busy cores",
    ]
    title = (
        f"One catalog event per transaction, each producer a process with its own execution, {args.seconds:g} s "
        "per point; cores = CPU seconds ÷ wall seconds over the point\n\n"
    )
    return title + harness.table(header, rows)


def _stop(pipes: list[Connection], processes: t.Sequence[BaseProcess]) -> None:
    for pipe in pipes:
        with contextlib.suppress(OSError):
            pipe.send(None)
    for process in processes:
        process.join(10)
        if process.is_alive():
            process.kill()


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bench.appends", description=__doc__.split("\n\n")[0])
    levels = lambda s: [int(x) for x in s.split(",") if x.strip()]  # noqa: E731
    modes = lambda s: [m for m in s.split(",") if m in MODES] or list(MODES)[:2]  # noqa: E731
    p.add_argument("--producers", type=levels, default=[1, 8, 32], help="producer counts (1,8,32)")
    p.add_argument("--modes", type=modes, default=["own", "none"], help="of own, none, in-txn (own,none)")
    p.add_argument("--seconds", type=float, default=5.0, help="seconds per point (5)")
    p.add_argument("--rounds", type=int, default=3, help="rounds over every point; the table gives medians (3)")
    return p


def main(argv: list[str] | None = None) -> int:
    return harness.run("appends", parser(), measure, argv)


if __name__ == "__main__":
    raise SystemExit(main())
