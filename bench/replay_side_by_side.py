"""Replay of several servers at once, reads interleaved, by a client that is not the bottleneck.

The shared bench's replay client parses every frame as it arrives, and that parser tops out near
the rate the servers send at (docs/performance.md), so its figure cannot tell the servers apart
there. This client only collects bytes until the server closes the response (``Connection:
close``); the clock runs from the connect to the last byte. Only then is the body decoded and
parsed with the shared bench's own ``sseclient`` and checked: ids 1..N once each, in order,
``complete`` last. Each server (``bench.side_by_side``) stores ``--events`` catalog events through
the shared publisher's bulk mode (batches of 500), then ``ANALYZE``, as ``run.sh`` does; one
unmeasured read warms each up, then ``--rounds`` rounds read each server once in a random order.

    PYTHONPATH=. /tmp/streamapp-bench/venv/bin/python -m bench.replay_side_by_side \\
        flaskhub=flaskhub starlette=starlette ours=ours:.
"""

from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402
import random  # noqa: E402
import socket  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402

from . import side_by_side  # noqa: E402


def _args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="bench.replay_side_by_side", description=__doc__.split("\n\n")[0])
    side_by_side.add_arguments(ap)
    ap.add_argument("--events", type=int, default=100_000, help="events stored on each server (default 100,000)")
    ap.add_argument("--rounds", type=int, default=7, help="timed reads of each server (default 7)")
    return ap.parse_args()


def read_whole(port: int, path: str, headers: dict[str, str]) -> tuple[float, bytes]:
    """``GET path`` from ``Last-Event-ID: 0`` with ``Connection: close``: (seconds to the last byte, response)."""
    lines = [
        f"GET {path} HTTP/1.1",
        f"Host: 127.0.0.1:{port}",
        "Accept: text/event-stream",
        "Last-Event-ID: 0",
        "Connection: close",
        *(f"{k}: {v}" for k, v in headers.items()),
    ]
    request = ("\r\n".join(lines) + "\r\n\r\n").encode()
    parts: list[bytes] = []
    start = time.perf_counter()
    with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
        sock.sendall(request)
        while data := sock.recv(1 << 20):
            parts.append(data)
            last = time.perf_counter()
    return last - start, b"".join(parts)


def check(response: bytes, total: int) -> str | None:
    """What is wrong with a replay ``response`` of ``total`` events, or None."""
    from sseclient import ChunkedDecoder
    from sseclient import SSEParser

    head, _, body = response.partition(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 200"):
        return f"answered {head[:40]!r}"
    if b"transfer-encoding: chunked" in head.lower():
        body = ChunkedDecoder().feed(body)
    frames = [frame for frame in SSEParser().feed(body) if frame[0] is not None]
    ids = [frame[0] for frame in frames]
    if ids != list(range(1, total + 1)):
        return f"{len(ids):,} ids, not 1..{total:,} in order"
    if frames[-1][1] != b"complete":
        return f"ended at {frames[-1][1]!r}"
    return None


def main() -> None:
    args = _args()
    run = side_by_side.shared_modules(args.shared)
    import publisher

    with side_by_side.started(args, "replay") as sides:
        paths: dict[str, str] = {}
        for side in sides:
            http = publisher.Http(side.server.port, side.server.headers, 4)
            bulk = publisher.run_bulk({"n_events": args.events, "batch": 500, "deadline_s": 300}, http)
            if bulk["stored"] != args.events:
                raise SystemExit(f"{side.name}: stored {bulk['stored']} of {args.events} events")
            run.analyze(side.pg, side.db)
            paths[side.name] = run.STREAM_PATH.format(exec_id=bulk["exec_id"])
        rates: dict[str, list[float]] = {side.name: [] for side in sides}

        def read(side: side_by_side.Side) -> float:
            seconds, response = read_whole(side.server.port, paths[side.name], side.server.headers)
            wrong = check(response, args.events)
            if wrong:
                raise SystemExit(f"{side.name}: {wrong}")
            return float(args.events / seconds)

        for side in sides:
            read(side)  # warm-up, not counted
        for _ in range(args.rounds):
            for side in random.sample(sides, len(sides)):
                rates[side.name].append(read(side))
                time.sleep(0.2)
        print(f"Replay of {args.events:,} stored catalog events from id 0, {args.rounds} reads each, interleaved\n")
        print("| server | events/s median | min – max | every read correct |")
        print("|---|---|---|---|")
        for side in sides:
            got = rates[side.name]
            print(f"| {side.name} | {statistics.median(got):,.0f} | {min(got):,.0f} – {max(got):,.0f} | yes |")


if __name__ == "__main__":
    main()
