"""Publisher process: appends catalog events, one per authenticated HTTP POST, at a set aggregate rate.

``python -m bench.publisher``, started by ``harness.Child``: one JSON config line in,
one JSON result line out. It has the shape of the comparison bench's publisher
(``../shared/bench/publisher.py``), so streamapp gets the load the peers get (SPEC §8):
every execution's events H+1..K go out in order, one greenlet per execution, event n
of execution e due at ``t0 + (n·M + e) / rate``; each event's data carries
``t_pub_ns`` taken just before its POST; ``connections`` keep-alive connections.
"""

from __future__ import annotations

from gevent import monkey

monkey.patch_all()

import http.client  # noqa: E402
import json  # noqa: E402
import signal  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import typing as t  # noqa: E402

import gevent  # noqa: E402
import gevent.queue  # noqa: E402

from . import wire  # noqa: E402


class Poster:
    """A bounded pool of keep-alive connections; POSTs one JSON body at a time and counts answers."""

    def __init__(self, port: int, token: str, size: int) -> None:
        self.port = port
        self.headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
        self.pool: gevent.queue.Queue[http.client.HTTPConnection | None] = gevent.queue.Queue()
        for _ in range(size):
            self.pool.put(None)
        self.statuses: dict[str, int] = {}

    def post(self, path: str, event: dict[str, t.Any]) -> tuple[int, int]:
        """(status, t_pub_ns); status 0 when the request failed on the wire."""
        conn = self.pool.get() or http.client.HTTPConnection(wire.HOST, self.port, timeout=30)
        status = t_pub = 0
        try:
            for attempt in (0, 1):
                t_pub = time.time_ns()
                event["data"]["t_pub_ns"] = t_pub
                try:
                    conn.request("POST", path, json.dumps({"events": [event]}), self.headers)
                    response = conn.getresponse()
                    response.read()
                    status = response.status
                    break
                except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
                    # A keep-alive connection the server had closed: nothing was processed, resend once.
                    conn.close()
                    conn = http.client.HTTPConnection(wire.HOST, self.port, timeout=30)
                    if attempt:
                        raise
        except (OSError, http.client.HTTPException):
            conn.close()
        finally:
            self.pool.put(conn)
            self.statuses[str(status)] = self.statuses.get(str(status), 0) + 1
        return status, t_pub


def run(cfg: dict[str, t.Any]) -> dict[str, t.Any]:
    exec_ids, history, events, rate = cfg["exec_ids"], cfg["history"], cfg["events"], float(cfg["rate"])
    poster = Poster(cfg["port"], cfg["token"], cfg["connections"])
    post_us: list[int] = []
    late_us: list[int] = []
    t0 = time.monotonic() + 0.2  # every greenlet is waiting by then
    t0_ns = time.time_ns() + 200_000_000
    deadline = t0 + cfg["deadline_s"]

    def publish(e: int, exec_id: str) -> None:
        path = f"{wire.API}/workflows/{exec_id}/events"
        for n, j in enumerate(range(history + 1, events + 1)):
            wait = t0 + (n * len(exec_ids) + e) / rate - time.monotonic()
            if wait > 0:
                gevent.sleep(wait)
            else:
                late_us.append(int(-wait * 1e6))
            if time.monotonic() > deadline:
                return
            status, t_pub = poster.post(path, wire.catalog_event(j, events))
            if status == 201:
                post_us.append((time.time_ns() - t_pub) // 1000)

    workers = [gevent.spawn(publish, e, x) for e, x in enumerate(exec_ids)]
    gevent.joinall(workers, timeout=cfg["deadline_s"] + 5)
    gevent.killall([w for w in workers if not w.dead], timeout=5)
    seconds = (time.time_ns() - t0_ns) / 1e9
    return {
        "sent": sum(poster.statuses.values()),
        "ok": len(post_us),
        "statuses": poster.statuses,
        "seconds": seconds,
        "post_us": post_us,
        "late_us": late_us,
    }


def main() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent stops us on Ctrl-C
    result = run(json.loads(sys.stdin.readline()))
    sys.stdout.write(json.dumps(result) + "\n")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
