"""Best-effort text chunks (SPEC §5.2, issue 5) from one producer to many streams, end to end.

``--clients`` streams (100) on one agent execution without an ``output_schema`` (text mode:
``event: llm_chunk`` frames, no ``id:``) in one load process; one row per measurement of
``--seconds`` (10) each:

1. ``ChunkPublisher`` writing ~4-character tokens at ``--offered`` tokens/s (20,000), once per
   ``--line-every`` value (a line end every N tokens, 0: none, chunks cut by the 50 ms timer), then
   as fast as one thread goes once per ``--unthrottled-line-every`` value;
2. ``POST …/chunks``, one chunk per request from ``--http-threads`` threads, as fast as they go;
3. write → frame latency: one ~70-byte chunk every ``--every-ms`` through write + flush, its send
   time inside (so the figure includes the publishing transaction), p50 / p95 / p99 over every
   delivery, and per chunk when the first and the last stream got it (p50 over chunks);
4. a ``--big-kb`` KB chunk (split over several NOTIFY payloads) every ``--big-every-s``.

The reference is a witness that LISTENs on the chunk channel itself (``chunk_sources.Witness``):
a stream is equal when it got exactly the chunks published, in order. CPU: server tree,
PostgreSQL, the load process (its parsing happens after the clock stops), the producer's own,
and the machine.

    PYTHONPATH=. .venv/bin/python -m bench.chunks
    PYTHONPATH=. .venv/bin/python -m bench.chunks --seconds 5 --clients 50 --only tokens,latency
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import multiprocessing
import time
import typing as t
from pathlib import Path

from . import chunk_sources
from . import harness
from . import wire
from .harness import percentile as pct

COLUMNS = (
    "measurement",
    "offered",
    "tokens/s written",
    "chunks/s published (tokens per chunk)",
    "NOTIFY payloads/s: witness / the worker's counter",
    "chunks/s received per client",
    "text KB/s per client",
    "lost chunks (streams losing) / dropped counter / streams equal to the witness",
    "latency ms, or lag after the producer stopped",
    "NOTIFY queue peak",
    "producer send or POST ms, p50 / p99",
    "CPU s: server / PostgreSQL / load / producer; machine busy of wall × cores",
)


class Bench:
    def __init__(self, args: argparse.Namespace, pg: harness.Postgres, tmp: Path, stack: contextlib.ExitStack):
        self.args, self.pg, self.tmp = args, pg, tmp
        owner, self.token = pg.account()
        self.exec_id, self.scratch_id = pg.executions(owner, 2, 0, kind="agent")
        self.server = harness.Server(pg, tmp, {})
        stack.callback(self.server.stop)
        self.clients = harness.Child(
            "load",
            {
                "mode": "chunks",
                "port": self.server.port,
                "token": self.token,
                "exec_id": self.exec_id,
                "streams": args.clients,
                "read_timeout_s": 3600,
            },
            tmp,
        )
        stack.callback(self.clients.close)
        self.notes: list[str] = []
        self.witness = chunk_sources.Witness(pg.url, self.exec_id)
        stack.callback(self.witness.close)
        self._subscribe()

    def _subscribe(self) -> None:
        """Until every stream is open and has received a probe chunk, so each is subscribed in the hub."""
        conn = http.client.HTTPConnection(wire.HOST, self.server.port, timeout=10)
        headers = {"Authorization": f"Bearer {self.token}", "Content-Type": "application/json"}
        for n in range(int(harness.WAIT_S / 0.1)):
            status = self.clients.ask("status")
            if status["errors"]:
                raise RuntimeError(f"streams failed: {status['errors'][:5]}")
            if status["with_chunk"] == self.args.clients:
                return
            if status["open"] == self.args.clients:
                conn.request(
                    "POST", f"{wire.API}/agents/{self.exec_id}/chunks", json.dumps({"text": f"probe {n}\n"}), headers
                )
                conn.getresponse().read()
            time.sleep(0.1)
        raise RuntimeError("not every stream opened and received a probe chunk")

    def row(self, label: str, offered: str, target: t.Callable[..., None], job: dict[str, t.Any]) -> list[str]:
        """Run one producer against the open streams; compare each stream with the witness."""
        harness.log(f"{label} …")
        context = multiprocessing.get_context("spawn")
        pipe, child = context.Pipe()
        args = (
            (self.pg.url, self.exec_id)
            if target is chunk_sources.write
            else (self.server.port, self.token, self.exec_id)
        )
        process = context.Process(
            target=target,
            args=(child, *args, {**job, "seconds": self.args.seconds, "scratch_id": self.scratch_id}),
            daemon=True,
        )
        process.start()
        if not pipe.poll(harness.WAIT_S) or pipe.recv() != "ready":
            raise RuntimeError("the producer did not start")
        self.clients.ask("begin")
        self.witness.start()
        before = self.server.metrics()
        groups = {
            "server": self.server.processes,
            "postgres": self.pg.processes,
            "load": lambda: harness.tree(self.clients.process.pid),
        }
        with harness.Cpu(**groups) as cpu:
            pipe.send("go")
            produced = pipe.recv() if pipe.poll(self.args.seconds + harness.WAIT_S) else {"error": "no answer"}
            if "error" in produced:
                raise RuntimeError(f"the producer failed: {produced['error']}")
            received, quiet_since = -1, time.monotonic()
            while time.monotonic() - quiet_since < 1.0:  # until nothing more arrives for a second
                time.sleep(0.1)
                now = self.clients.ask("progress")["bytes"]
                if now != received:
                    received, quiet_since = now, time.monotonic()
            sent = self.witness.stop()
        process.join(10)
        after = self.server.metrics()
        streams = self.clients.ask("end", timeout=600, sent=sent)["streams"]
        return self._figures(label, offered, job, produced, sent, streams, before, after, cpu)

    def _figures(
        self,
        label: str,
        offered: str,
        job: dict[str, t.Any],
        produced: dict[str, t.Any],
        sent: list[int],
        streams: list[dict[str, t.Any]],
        before: dict[str, float],
        after: dict[str, float],
        cpu: harness.Cpu,
    ) -> list[str]:
        seconds, n = produced["seconds"], len(streams)
        spans = [max(seconds, (s["last_ns"] - produced["start_ns"]) / 1e9) for s in streams]
        lat: list[float] = []
        by_chunk: dict[int, list[float]] = {}
        for s in streams:
            for sent_ns, recv_ns in s["timed"]:
                lat.append((recv_ns - sent_ns) / 1e6)
                by_chunk.setdefault(sent_ns, []).append((recv_ns - sent_ns) / 1e6)
        spread = (
            f"; first / last stream p50 {pct([min(v) for v in by_chunk.values()], 50):.1f} / "
            f"{pct([max(v) for v in by_chunk.values()], 50):.1f}"
        )
        if job["kind"] == "timed" and job["size"] > 1000:
            latency = f"p50 {pct(lat, 50):.1f} / max {max(lat, default=float('nan')):.1f}{spread}"
        elif job["kind"] == "timed":
            latency = f"p50 {pct(lat, 50):.1f} / p95 {pct(lat, 95):.1f} / p99 {pct(lat, 99):.1f}{spread}"
        else:
            last = max((s["last_ns"] for s in streams), default=0)
            latency = f"lag {max(0.0, (last - produced['end_ns']) / 1e9):.2f} s"

        def delta(name: str) -> float:
            return after.get(name, 0.0) - before.get(name, 0.0)

        written = produced["written"]
        per_chunk = f" ({written / len(sent):,.1f})" if job["kind"] == "tokens" and sent else ""
        self._check(label, job, produced, sent, streams, delta)
        return [
            label,
            offered,
            f"{written / seconds:,.0f}" if job["kind"] == "tokens" else "–",
            f"{len(sent) / seconds:,.1f}{per_chunk}",
            f"{self.witness.payloads / seconds:,.1f} / {delta('streamapp_chunk_notifications_total') / seconds:,.1f}",
            f"{sum(s['received'] / span for s, span in zip(streams, spans, strict=True)) / n:,.1f}",
            f"{sum(s['bytes'] / span for s, span in zip(streams, spans, strict=True)) / n / 1000:,.1f}",
            f"{sum(s['lost'] for s in streams):,} ({sum(s['lost'] > 0 for s in streams)}) / "
            f"{delta('streamapp_chunks_dropped_total'):,.0f} / {sum(s['equal'] for s in streams)} of {n}",
            latency,
            f"{self.witness.queue_peak:.2%}",
            f"{pct(produced['send_ms'], 50):.1f} / {pct(produced['send_ms'], 99):.1f}" if produced["send_ms"] else "–",
            cpu.row(produced["cpu_s"]),
        ]

    def _check(
        self,
        label: str,
        job: dict[str, t.Any],
        produced: dict[str, t.Any],
        sent: list[int],
        streams: list[dict[str, t.Any]],
        delta: t.Callable[[str], float],
    ) -> None:
        """Anything a correct run would not show, printed under the table."""
        odd = {k: sum(s[k] for s in streams) for k in ("with_id", "other", "dropped")}
        odd["not open"] = sum(not s["open"] for s in streams)
        odd["foreign"] = sum(s["foreign"] for s in streams)
        odd["overflows"] = int(delta("streamapp_stream_overflows_total"))
        for name, value in odd.items():
            if value:
                self.notes.append(f"{label}: {name} {value}")
        if set(produced.get("statuses", {"202": 1})) != {"202"}:
            self.notes.append(f"{label}: POST statuses {produced['statuses']}")
        if job["kind"] == "tokens" and "".join(self.witness.texts) != "".join(
            chunk_sources.token(i, job["line_every"]) for i in range(produced["written"])
        ):
            self.notes.append(f"{label}: the chunks published do not add up to the text written")
        if job["kind"] == "timed" and len(sent) != produced["written"]:
            self.notes.append(f"{label}: {produced['written']} chunks written, {len(sent)} published")


def measure(args: argparse.Namespace, pg: harness.Postgres, tmp: Path, stack: contextlib.ExitStack) -> str:
    bench = Bench(args, pg, tmp, stack)
    rows: list[list[str]] = []
    harness.log(f"{args.clients} streams open and subscribed")
    if "tokens" in args.only:
        plan = [(args.offered, k) for k in args.line_every] + [(0, k) for k in args.unthrottled_line_every]
        for rate, every in plan:
            lines = f"LF every {every} tokens" if every else "no line ends"
            rows.append(
                bench.row(
                    f"1. ChunkPublisher, ~4-char tokens, {lines}",
                    f"{rate:,} tokens/s" if rate else "as fast as one thread writes",
                    chunk_sources.write,
                    {"kind": "tokens", "rate": rate, "line_every": every},
                )
            )
    if "http" in args.only:
        rows.append(
            bench.row(
                f"2. POST …/chunks, {args.http_threads} threads, {args.http_size}-char chunks",
                "as fast as they go",
                chunk_sources.post,
                {"kind": "http", "threads": args.http_threads, "size": args.http_size},
            )
        )
    if "latency" in args.only:
        rows.append(
            bench.row(
                "3. write → frame, ~70-byte chunk, write + flush",
                f"1 chunk / {args.every_ms:g} ms",
                chunk_sources.write,
                {"kind": "timed", "size": 40, "every_s": args.every_ms / 1000},
            )
        )
    if "big" in args.only:
        rows.append(
            bench.row(
                f"4. {args.big_kb} KB chunk, write → whole frame",
                f"1 chunk / {args.big_every_s:g} s",
                chunk_sources.write,
                {"kind": "timed", "size": args.big_kb * 1024, "every_s": args.big_every_s},
            )
        )
    errors = bench.server.errors()
    if errors:
        bench.notes.append(f"the server logged {len(errors)} error line(s), e.g. {errors[-1]!r}")
    title = (
        f"{args.clients} streams on one agent execution (text mode), one gunicorn worker, "
        f"{args.seconds:g} s per measurement\n\n"
    )
    notes = "".join(f"\n* {note}" for note in bench.notes) or "\n* no anomalies"
    return title + harness.table(COLUMNS, rows) + "\n" + notes


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bench.chunks", description=__doc__.split("\n\n")[0])
    ints = lambda s: [int(x) for x in s.split(",") if x.strip()]  # noqa: E731
    p.add_argument("--clients", type=int, default=100, help="streams on the one execution (100)")
    p.add_argument("--seconds", type=float, default=10.0, help="seconds per measurement (10)")
    p.add_argument("--offered", type=int, default=20000, help="tokens/s the ChunkPublisher writes (20,000)")
    p.add_argument("--line-every", type=ints, default=[0, 16], help="a line end every N tokens, one row each (0,16)")
    p.add_argument("--unthrottled-line-every", type=ints, default=[16], help="as --line-every, unthrottled (16)")
    p.add_argument("--http-threads", type=int, default=4, help="threads POSTing chunks (4)")
    p.add_argument("--http-size", type=int, default=64, help="characters per POSTed chunk (64)")
    p.add_argument("--every-ms", type=float, default=10.0, help="latency: one chunk every N ms (10)")
    p.add_argument("--big-kb", type=int, default=100, help="size of the big chunk in KB (100)")
    p.add_argument("--big-every-s", type=float, default=0.5, help="one big chunk every N s (0.5)")
    p.add_argument(
        "--only",
        type=lambda s: set(s.split(",")),
        default={"tokens", "http", "latency", "big"},
        help="measurements to run, of tokens, http, latency, big (all)",
    )
    return p


def main(argv: list[str] | None = None) -> int:
    return harness.run("chunks", parser(), measure, argv)


if __name__ == "__main__":
    raise SystemExit(main())
