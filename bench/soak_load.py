#!/usr/bin/env python
"""The soak's load processes: streams that hang up at random, and the publisher (see ``bench/soak.py``).

Run by ``bench/soak.py`` as ``python -m bench.soak_load client|publisher PLAN_JSON``.
gevent patches the process first, before anything opens a socket; apart from
gevent only the standard library and ``streamapp.sse`` (the project's one SSE
parser) are used, so each process holds hundreds of streams cheaply.
"""

from __future__ import annotations

from gevent import monkey

monkey.patch_all()

import dataclasses  # noqa: E402
import http.client  # noqa: E402
import json  # noqa: E402
import random  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import gevent  # noqa: E402
import gevent.queue  # noqa: E402

from streamapp import sse  # noqa: E402


@dataclasses.dataclass
class Plan:
    """What every client and the publisher process is told (as JSON)."""

    port: int
    exec_ids: list[str]
    tokens: list[str]  # the owner's token of each execution, for its streams and its appends
    start: float  # wall clock: streams connect from here
    window: tuple[float, float]  # wall clock: the measured window
    hard_end: float
    disconnect_mean_s: float
    rate: float
    streams: list[int] = dataclasses.field(default_factory=list)  # this client's stream numbers
    out: str = ""


class _Follower:
    """One stream's life: connect, read, hang up at random, resume with Last-Event-ID."""

    def __init__(self, plan: Plan, number: int) -> None:
        self.plan, self.number = plan, number
        self.exec_id = plan.exec_ids[number % len(plan.exec_ids)]
        self.token = plan.tokens[number % len(plan.exec_ids)]
        self.last = 0
        self.done = False
        self.connected_s = 0.0
        self.connected = False
        self.counts = {
            "events": 0,
            "duplicated": 0,
            "lost": 0,
            "hang_ups": 0,
            "server_ends": 0,
            "refused": 0,
            "errors": 0,
            "connects": 0,
        }
        self.error_kinds: dict[str, int] = {}
        #: Seconds from the end of one connection to the next 200, inside the measured window.
        self.gaps: list[float] = []
        self._closed_at: float | None = None

    def run(self) -> None:
        gevent.sleep(random.uniform(0, 10) + max(0.0, self.plan.start - time.time()))
        while not self.done and time.time() < self.plan.hard_end:
            wait = self._connection()
            if wait:
                gevent.sleep(wait)

    def _connection(self) -> float:
        """One connection; the seconds to wait before the next (0: at once)."""
        path = f"/api/v0/executions/workflows/{self.exec_id}/stream"
        headers = {"Authorization": f"Bearer {self.token}", "Accept": "text/event-stream"}
        if self.last:
            headers["Last-Event-ID"] = str(self.last)
        conn = http.client.HTTPConnection("127.0.0.1", self.plan.port, timeout=60)
        opened = None
        try:
            conn.request("GET", path, headers=headers)
            response = conn.getresponse()
            if response.status == 204:
                self.done = True
                return 0.0
            if response.status != 200:
                self.counts["refused"] += 1
                return float(response.getheader("Retry-After") or 1)
            opened = time.time()
            if self._closed_at is not None and self.plan.window[0] <= self._closed_at < self.plan.window[1]:
                self.gaps.append(opened - self._closed_at)
            self.connected = True
            self.counts["connects"] += 1
            hang_up = opened + random.expovariate(1 / self.plan.disconnect_mean_s)
            decoder = sse.Decoder()
            while not self.done:
                left = hang_up - time.time() if time.time() < self.plan.window[1] else None
                if left is not None and left <= 0:
                    self.counts["hang_ups"] += 1
                    return 0.0
                chunk = None
                with gevent.Timeout(left, False):
                    chunk = response.read1(65536)
                if chunk is None:  # the hang-up time came (the timer may fire a hair early)
                    self.counts["hang_ups"] += 1
                    return 0.0
                if not chunk:
                    self.counts["server_ends"] += 1
                    return 0.0
                for item in decoder.feed(chunk):
                    if isinstance(item, sse.Message) and item.id is not None:
                        self._event(int(item.id), item.type)
            return 0.0
        except (OSError, http.client.HTTPException) as exc:
            self.counts["errors"] += 1
            self.error_kinds[type(exc).__name__] = self.error_kinds.get(type(exc).__name__, 0) + 1
            return 0.5
        finally:
            self.connected = False
            conn.close()
            if opened is not None:
                self._closed_at = time.time()
                low, high = self.plan.window
                self.connected_s += max(0.0, min(time.time(), high) - max(opened, low))

    def _event(self, event_id: int, type_name: str) -> None:
        self.counts["events"] += 1
        if event_id <= self.last:
            self.counts["duplicated"] += 1
            return
        self.counts["lost"] += event_id - self.last - 1
        self.last = event_id
        if type_name == "complete":
            self.done = True


def _client(plan: Plan) -> None:
    followers = [_Follower(plan, n) for n in plan.streams]
    greenlets = [gevent.spawn(f.run) for f in followers]
    status = Path(plan.out + ".status")
    while not all(g.dead for g in greenlets) and time.time() < plan.hard_end + 5:
        _write_json(status, {"connected": sum(f.connected for f in followers)})
        gevent.sleep(2)
    gevent.killall(greenlets, timeout=5)
    _write_json(
        Path(plan.out),
        [
            {
                "stream": f.number,
                "exec_id": f.exec_id,
                "last": f.last,
                "done": f.done,
                "connected_s": f.connected_s,
                "gaps": f.gaps,
                "error_kinds": f.error_kinds,
                **f.counts,
            }
            for f in followers
        ],
    )


def _publisher(plan: Plan) -> None:
    work: gevent.queue.Queue = gevent.queue.Queue(maxsize=1000)
    counts = {"ok": 0, "failed": 0}
    latencies_ms: list[float] = []

    def post() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", plan.port, timeout=30)
        number = 0
        while (index := work.get()) is not None:
            number += 1
            exec_id = plan.exec_ids[index]
            headers = {"Authorization": f"Bearer {plan.tokens[index]}", "Content-Type": "application/json"}
            event = (
                {"type": "warning", "data": {"code": "soak", "message": f"n{number}"}}
                if number % 2
                else {"type": "tool_call", "data": {"tool_call_id": f"c{number}", "tool_name": "soak", "status": "ok"}}
            )
            started = time.perf_counter()
            try:
                conn.request(
                    "POST", f"/api/v0/executions/workflows/{exec_id}/events", json.dumps({"events": [event]}), headers
                )
                answer = conn.getresponse()
                answer.read()
                ok = answer.status == 201
            except (OSError, http.client.HTTPException):
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", plan.port, timeout=30)
                ok = False
            counts["ok" if ok else "failed"] += 1
            if ok:
                latencies_ms.append((time.perf_counter() - started) * 1000)
        conn.close()

    posters = [gevent.spawn(post) for _ in range(16)]
    gevent.sleep(max(0.0, plan.start - time.time()))
    for number in range(int((plan.window[1] - plan.start) * plan.rate)):
        gevent.sleep(max(0.0, plan.start + number / plan.rate - time.time()))
        work.put(number % len(plan.exec_ids))
    for _ in posters:
        work.put(None)
    gevent.joinall(posters, timeout=60)
    _write_json(Path(plan.out), {**counts, "latencies_ms": latencies_ms})


def _write_json(path: Path, value: object) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(value))
    tmp.replace(path)


def main(argv: list[str]) -> int:
    role, raw = argv
    plan = Plan(**json.loads(raw))
    (_client if role == "client" else _publisher)(plan)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
