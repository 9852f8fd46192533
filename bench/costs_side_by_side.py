"""What each operation costs in server and PostgreSQL CPU, several servers side by side.

Where ``run.sh`` gives one CPU total for a whole run, this takes it apart per operation, each
server measured in turn within a round and the rounds repeated (``bench.side_by_side``). Every
server gets 100 workflows with 5 stored events; then, each round:

1. ``--posts`` catalog events, one authenticated POST each, over one keep-alive connection,
   no stream open: CPU per POST;
2. ``--streams`` streams opened from ``Last-Event-ID: 0``, each to its first event: CPU per connect;
3. ``--posts`` POSTs again with those streams open and read (``--streams`` / 100 per execution):
   what exceeds step 1, per frame delivered;
4. the streams closed by their clients, and two seconds to notice: CPU per close.

CPU is the server's process tree and PostgreSQL's, from /proc, in µs; medians over the rounds.

    PYTHONPATH=. /tmp/streamapp-bench/venv/bin/python -m bench.costs_side_by_side flaskhub=flaskhub ours=ours:.
"""

from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402
import json  # noqa: E402
import random  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
import typing as t  # noqa: E402

import gevent  # noqa: E402

from . import side_by_side  # noqa: E402

EXECS = 100


def _args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="bench.costs_side_by_side", description=__doc__.split("\n\n")[0])
    side_by_side.add_arguments(ap)
    ap.add_argument("--posts", type=int, default=2000, help="POSTs per step (default 2,000)")
    ap.add_argument("--streams", type=int, default=1000, help="streams opened per round (default 1,000)")
    ap.add_argument("--rounds", type=int, default=5, help="rounds (default 5)")
    return ap.parse_args()


class Cost:
    """CPU of one server's tree and of PostgreSQL, in µs, over a ``with`` block."""

    def __init__(self, run: t.Any, side: side_by_side.Side) -> None:
        self.run, self.side = run, side
        self.server_us = self.pg_us = 0.0

    def __enter__(self) -> "Cost":
        self._server, self._pg = self.run.tree_cpu(self.side.server.proc.pid), self.side.pg.cpu_seconds()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server_us = (self.run.tree_cpu(self.side.server.proc.pid) - self._server) * 1e6
        self.pg_us = (self.side.pg.cpu_seconds() - self._pg) * 1e6


def main() -> None:
    args = _args()
    run = side_by_side.shared_modules(args.shared)
    import publisher
    from sseclient import SSEStream

    def post_all(http: t.Any, exec_ids: list[str], first: int) -> None:
        for k in range(args.posts):
            event = publisher.make_event(first + k // EXECS, 10**9)
            event["data"]["t_pub_ns"] = time.time_ns()
            body = json.dumps({"events": [event]})
            status, _, _ = http.post(f"{publisher.BASE}/{exec_ids[k % EXECS]}/events", lambda body=body: (body, 0))
            if status != 201:
                raise SystemExit(f"a POST answered {status}")

    def open_stream(side: side_by_side.Side, exec_id: str) -> t.Any:
        sse = SSEStream(
            side.server.port,
            run.STREAM_PATH.format(exec_id=exec_id),
            {"Last-Event-ID": "0", **side.server.headers},
            read_timeout=600,
        )
        if sse.connect() != 200:
            raise SystemExit(f"{side.name}: a stream was refused")
        for _, frames in sse.chunks():
            if any(frame[0] is not None for frame in frames):
                return sse
        raise SystemExit(f"{side.name}: a stream ended before its first event")

    delivered = [0]

    def read(sse: t.Any) -> None:
        for _, frames in sse.chunks():
            delivered[0] += sum(1 for frame in frames if frame[0] is not None)

    with side_by_side.started(args, "costs") as sides:
        setups = []
        for side in sides:
            http = publisher.Http(side.server.port, side.server.headers, 1)
            setup = publisher.run_setup({"execs": EXECS, "history": 5, "events": 10**9}, http)
            setups.append((side, http, setup["exec_ids"]))
        figures: dict[str, list[list[float]]] = {side.name: [] for side in sides}
        first = 6
        for _ in range(args.rounds):
            for side, http, exec_ids in random.sample(setups, len(setups)):
                with Cost(run, side) as alone:
                    post_all(http, exec_ids, first)
                with Cost(run, side) as connects:
                    streams = [open_stream(side, exec_ids[k % EXECS]) for k in range(args.streams)]
                readers = [gevent.spawn(read, sse) for sse in streams]
                time.sleep(1)  # the rest of each replay arrives before the count starts
                before = delivered[0]
                with Cost(run, side) as followed:
                    post_all(http, exec_ids, first)
                    time.sleep(0.5)
                frames = delivered[0] - before
                if frames != args.posts * args.streams // EXECS:
                    raise SystemExit(f"{side.name}: {frames} frames delivered of {args.posts * args.streams // EXECS}")
                with Cost(run, side) as closes:
                    gevent.killall(readers)
                    for sse in streams:
                        sse.close()
                    time.sleep(2)
                figures[side.name].append(
                    [
                        alone.server_us / args.posts,
                        alone.pg_us / args.posts,
                        connects.server_us / args.streams,
                        connects.pg_us / args.streams,
                        (followed.server_us - alone.server_us) / frames,
                        (followed.pg_us - alone.pg_us) / frames,
                        closes.server_us / args.streams,
                        closes.pg_us / args.streams,
                    ]
                )
            first += args.posts // EXECS + 1
        print(
            f"CPU per operation, µs, server / PostgreSQL: medians of {args.rounds} rounds, servers in turn; "
            f"{args.posts:,} POSTs a step, {args.streams:,} streams over {EXECS} workflows\n"
        )
        print("| server | a POST, no stream open | a connect, to its first event | a frame delivered | a close |")
        print("|---|---|---|---|---|")
        for side in sides:
            rows = figures[side.name]
            cells = [
                f"{statistics.median(r[i] for r in rows):.0f} / {statistics.median(r[i + 1] for r in rows):.0f}"
                for i in range(0, 8, 2)
            ]
            print(f"| {side.name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
