"""Time to first event of several servers at once, probes interleaved: changes too small for
the noise between whole runs of ``../shared/bench`` show here.

Each server is one worker of ``../shared/bench`` (its ``Server`` class, so ours runs exactly as
there) with a database of its own, ``--execs`` workflows of 5 stored events and ``--open``
idle streams. Then ``--rounds`` rounds, each one probe per server in a random order: a new
connection, ``GET …/stream`` from ``Last-Event-ID: 0``, timed to the response head and to the
first ``id:`` frame, as the shared bench's TTFE probes are. A busy moment of the machine hits
every server alike. Prints p50 / p95 / p99 per server, and the head's p50 / p95.

Run it with the shared bench's interpreter (``run.sh`` makes it on first use); a server is
``NAME=flaskhub`` (or another peer) or ``NAME=ours:CHECKOUT[:KEY=VALUE,...]``::

    /tmp/streamapp-bench/venv/bin/python bench/ttfe_side_by_side.py flaskhub=flaskhub ours=ours:.
    git worktree add /tmp/before HEAD~1 && ln -s "$PWD/.venv" /tmp/before/.venv
    /tmp/streamapp-bench/venv/bin/python bench/ttfe_side_by_side.py \\
        flaskhub=flaskhub before=ours:/tmp/before after=ours:.
"""

from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402
import random  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import typing as t  # noqa: E402
from pathlib import Path  # noqa: E402

SHARED = Path(__file__).resolve().parent.parent.parent / "shared" / "bench"


def _args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("servers", nargs="+", help="NAME=PEER or NAME=ours:CHECKOUT[:KEY=VALUE,...]")
    ap.add_argument("--shared", type=Path, default=SHARED, help=f"the comparison bench (default {SHARED})")
    ap.add_argument("--open", type=int, default=300, help="idle streams open on each server (default 300)")
    ap.add_argument("--execs", type=int, default=50, help="workflows per server (default 50)")
    ap.add_argument("--rounds", type=int, default=1000, help="probes per server (default 1000)")
    return ap.parse_args()


def _percentiles(ns: list[int]) -> str:
    ns = sorted(ns)
    return " / ".join(f"{ns[min(len(ns) - 1, int(len(ns) * q))] / 1e6:.3f}" for q in (0.5, 0.95, 0.99))


def main() -> None:
    args = _args()
    sys.path.insert(0, str(args.shared))
    import publisher
    import run
    from sseclient import SSEStream

    logs = Path(tempfile.mkdtemp(prefix="ttfe-side-by-side-"))
    pg = run.Postgres()
    servers: list[tuple[str, t.Any, list[str]]] = []
    started: list[t.Any] = []

    def probe(server: t.Any, exec_id: str) -> tuple[int, int]:
        sse = SSEStream(server.port, run.STREAM_PATH.format(exec_id=exec_id), {"Last-Event-ID": "0", **server.headers})
        try:
            start = time.time_ns()
            if sse.connect() != 200:
                raise SystemExit(f"a probe got {sse.status}")
            head = time.time_ns() - start
            for now, frames in sse.chunks():
                if any(frame[0] is not None for frame in frames):
                    return head, now - start
            raise SystemExit("a stream ended before its first event")
        finally:
            sse.close()

    try:
        for n, spec in enumerate(args.servers):
            name, _, system = spec.partition("=")
            system, _, rest = system.partition(":")
            project, _, env = rest.partition(":")
            opts = argparse.Namespace(
                project=Path(project).resolve() if project else None,
                project_python=None,
                ours_env=[item for item in env.split(",") if item],
            )
            pg.recreate(f"ttfe{n}")
            server = run.Server(system, pg.url_for(f"ttfe{n}"), run.free_port(), logs / f"{name}.log", opts)
            server.prepare()
            started.append(server)
            server.start()
            http = publisher.Http(server.port, server.headers, 16)
            setup = publisher.run_setup({"execs": args.execs, "history": 5, "events": 50}, http)
            servers.append((name, server, setup["exec_ids"]))
        held = []
        for _, server, exec_ids in servers:
            for k in range(args.open):
                path = run.STREAM_PATH.format(exec_id=exec_ids[k % len(exec_ids)])
                stream = SSEStream(server.port, path, {"Last-Event-ID": "0", **server.headers})
                stream.connect()
                held.append(stream)
        time.sleep(2)
        heads: dict[str, list[int]] = {name: [] for name, _, _ in servers}
        firsts: dict[str, list[int]] = {name: [] for name, _, _ in servers}
        for r in range(args.rounds):
            for name, server, exec_ids in random.sample(servers, len(servers)):
                head, first = probe(server, exec_ids[(r * 7919) % len(exec_ids)])
                heads[name].append(head)
                firsts[name].append(first)
            time.sleep(0.002)
        print(f"{args.rounds} probes each, {args.open} streams open on each server; ms")
        print("| server | TTFE p50 / p95 / p99 | response head p50 / p95 / p99 |")
        print("|---|---|---|")
        for name, _, _ in servers:
            print(f"| {name} | {_percentiles(firsts[name])} | {_percentiles(heads[name])} |")
        for stream in held:
            stream.close()
    finally:
        for server in started:
            server.stop()


if __name__ == "__main__":
    main()
