"""Time to first event of several servers at once, probes interleaved (``bench.side_by_side``).

Each server gets ``--execs`` workflows of 5 stored events and ``--open`` idle streams. Then
``--rounds`` rounds, each one probe per server in a random order: a new connection, ``GET
…/stream`` from ``Last-Event-ID: 0``, timed to the response head and to the first ``id:``
frame, as the shared bench's TTFE probes are. Prints p50 / p95 / p99 per server, and the head's.

    PYTHONPATH=. /tmp/streamapp-bench/venv/bin/python -m bench.ttfe_side_by_side flaskhub=flaskhub ours=ours:.
    git worktree add /tmp/before HEAD~1 && ln -s "$PWD/.venv" /tmp/before/.venv
    PYTHONPATH=. /tmp/streamapp-bench/venv/bin/python -m bench.ttfe_side_by_side \\
        flaskhub=flaskhub before=ours:/tmp/before after=ours:.
"""

from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402
import random  # noqa: E402
import time  # noqa: E402
import typing as t  # noqa: E402

from . import side_by_side  # noqa: E402


def _args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="bench.ttfe_side_by_side", description=__doc__.split("\n\n")[0])
    side_by_side.add_arguments(ap)
    ap.add_argument("--open", type=int, default=300, help="idle streams open on each server (default 300)")
    ap.add_argument("--execs", type=int, default=50, help="workflows per server (default 50)")
    ap.add_argument("--rounds", type=int, default=1000, help="probes per server (default 1000)")
    return ap.parse_args()


def main() -> None:
    args = _args()
    run = side_by_side.shared_modules(args.shared)
    import publisher
    from sseclient import SSEStream

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

    with side_by_side.started(args, "ttfe") as sides:
        servers = []
        for side in sides:
            http = publisher.Http(side.server.port, side.server.headers, 16)
            setup = publisher.run_setup({"execs": args.execs, "history": 5, "events": 50}, http)
            servers.append((side.name, side.server, setup["exec_ids"]))
        held = []
        for _, server, exec_ids in servers:
            for k in range(args.open):
                path = run.STREAM_PATH.format(exec_id=exec_ids[k % len(exec_ids)])
                stream = SSEStream(server.port, path, {"Last-Event-ID": "0", **server.headers})
                stream.connect()
                held.append(stream)
        time.sleep(2)
        heads: dict[str, list[float]] = {name: [] for name, _, _ in servers}
        firsts: dict[str, list[float]] = {name: [] for name, _, _ in servers}
        for r in range(args.rounds):
            for name, server, exec_ids in random.sample(servers, len(servers)):
                head, first = probe(server, exec_ids[(r * 7919) % len(exec_ids)])
                heads[name].append(head / 1e6)
                firsts[name].append(first / 1e6)
            time.sleep(0.002)
        print(f"{args.rounds} probes each, {args.open} streams open on each server; ms")
        print("| server | TTFE p50 / p95 / p99 | response head p50 / p95 / p99 |")
        print("|---|---|---|")
        for name, _, _ in servers:
            print(f"| {name} | {side_by_side.percentiles(firsts[name])} | {side_by_side.percentiles(heads[name])} |")
        for stream in held:
            stream.close()


if __name__ == "__main__":
    main()
