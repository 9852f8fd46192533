"""What the chunks bench publishes, and a witness of what was published (``bench.chunks``).

The writers run in processes of their own (``spawn``): ``ChunkPublisher`` at a token rate
or a chunk at a time, or ``POST …/chunks`` from threads. Each warms up, says ``ready``,
waits for ``go``, then reports what it did and its own CPU.

The witness LISTENs on the chunk channel itself and reassembles what PostgreSQL delivered:
the chunks published, in commit order, and their NOTIFY payloads. It is the reference each
stream is compared with, seen the way every worker sees it, with nothing in streamapp
patched. (A ``ChunkPublisher`` that reported what it sent, e.g. an ``on_sent(text, payloads)``
callback, would let a bench count at the source as well.)
"""

from __future__ import annotations

import http.client
import json
import select
import threading
import time
import typing as t
import zlib
from multiprocessing.connection import Connection

import psycopg2

from streamapp import chunks
from streamapp.chunks import ChunkPublisher
from streamapp.db import Database

from . import harness
from . import wire


def token(n: int, line_every: int) -> str:
    """The n-th ~4-character token a model writes; one in ten not ASCII; a line end every ``line_every``."""
    end = "\n" if line_every and n % line_every == line_every - 1 else " "
    return f"ü{n % 100:02d}{end}" if n % 10 == 7 else f"{n % 1000:03d}{end}"


def filler(size: int) -> str:
    """``size`` characters of prose, a line end every 100."""
    line = ("lorem ipsum dolor sit amet " * 4)[:99] + "\n"
    return (line * (size // 100 + 1))[:size]


def write(pipe: Connection, url: str, exec_id: str, job: dict[str, t.Any]) -> None:
    """Through ``ChunkPublisher``: ``tokens`` at ``rate``/s (0: as fast as one thread goes), or ``timed``
    chunks of ``size`` characters every ``every_s``, each written then flushed, its send time inside."""
    db = Database(url, 2, application_name=f"{harness.APP_NAME}-writer")
    try:
        with ChunkPublisher(db, job["scratch_id"]) as warm:  # the connection and the redactor, on an execution
            warm.write("warm-up\n")  # nobody watches, before the clock starts
        out = ChunkPublisher(db, exec_id)
        pipe.send("ready")
        pipe.recv()
        written = nbytes = 0
        send_ms: list[float] = []
        start_ns, start = time.time_ns(), time.monotonic()
        end = start + job["seconds"]
        if job["kind"] == "tokens":
            rate, every = job["rate"], job["line_every"]
            texts = [token(i, every) for i in range(max(every, 1) * 1000)]
            while (now := time.monotonic()) < end:
                due = int((now - start) * rate) if rate else written + 1000
                if written >= due:
                    time.sleep(0.0005)
                    continue
                for _ in range(min(due - written, 2000)):
                    text = texts[written % len(texts)]
                    began = time.perf_counter()
                    out.write(text)
                    if "\n" in text:  # a line end sends the chunk in this thread: the publishing transaction
                        send_ms.append((time.perf_counter() - began) * 1000)
                    nbytes += len(text.encode())
                    written += 1
        else:
            body = filler(job["size"])
            for seq in range(int(job["seconds"] / job["every_s"])):
                time.sleep(max(0.0, start + seq * job["every_s"] - time.monotonic()))
                began = time.perf_counter()
                text = f"T{time.time_ns()} {seq:06d} {body}"
                out.write(text)
                out.flush()
                send_ms.append((time.perf_counter() - began) * 1000)
                nbytes += len(text.encode())
                written += 1
        out.close()
        pipe.send(
            {
                "written": written,
                "bytes": nbytes,
                "start_ns": start_ns,
                "end_ns": time.time_ns(),
                "seconds": time.monotonic() - start,
                "send_ms": send_ms,
                "cpu_s": time.process_time(),
            }
        )
    except Exception as exc:  # reported to the parent, which stops
        pipe.send({"error": f"{type(exc).__name__}: {exc}"})
    finally:
        db.close()


def post(pipe: Connection, port: int, token_: str, exec_id: str, job: dict[str, t.Any]) -> None:
    """``POST …/chunks``, one chunk of ``size`` characters per request, from ``threads`` threads, as fast as they go."""
    path = f"{wire.API}/agents/{exec_id}/chunks"
    headers = {"Authorization": f"Bearer {token_}", "Content-Type": "application/json"}
    statuses: dict[str, int] = {}
    send_ms: list[float] = []
    lock = threading.Lock()
    pad = filler(job["size"])
    pipe.send("ready")
    pipe.recv()
    start_ns, start = time.time_ns(), time.monotonic()

    def run(k: int) -> None:
        conn = http.client.HTTPConnection(wire.HOST, port, timeout=30)
        seq = 0
        while time.monotonic() < start + job["seconds"]:
            seq += 1
            began, status = time.perf_counter(), 0
            try:
                conn.request("POST", path, json.dumps({"text": f"h{k}-{seq:07d} {pad}"[: job["size"]]}), headers)
                response = conn.getresponse()
                response.read()
                status = response.status
            except (OSError, http.client.HTTPException):
                conn.close()
            with lock:
                send_ms.append((time.perf_counter() - began) * 1000)
                statuses[str(status)] = statuses.get(str(status), 0) + 1
        conn.close()

    threads = [threading.Thread(target=run, args=(k,)) for k in range(job["threads"])]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(job["seconds"] + 60)
    pipe.send(
        {
            "written": statuses.get("202", 0),
            "bytes": 0,
            "start_ns": start_ns,
            "end_ns": time.time_ns(),
            "seconds": time.monotonic() - start,
            "send_ms": send_ms,
            "statuses": statuses,
            "cpu_s": time.process_time(),
        }
    )


class Witness:
    """LISTENs on the chunk channel between ``start`` and ``stop``: the chunks of one execution, in order."""

    def __init__(self, url: str, exec_id: str) -> None:
        self.exec_id = exec_id
        self.conn = psycopg2.connect(url, application_name=f"{harness.APP_NAME}-witness")
        self.conn.autocommit = True
        with self.conn.cursor() as cur:
            cur.execute(f"LISTEN {chunks.CHANNEL}")
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.texts: list[str] = []
        self.payloads, self.queue_peak = 0, 0.0

    def start(self) -> None:
        self.conn.poll()  # what came before (the probes) is not this measurement's
        self.conn.notifies.clear()
        self.texts, self.payloads, self.queue_peak = [], 0, 0.0
        self._stop.clear()
        self._thread = threading.Thread(target=self._listen, daemon=True)
        self._thread.start()

    def _listen(self) -> None:
        joiner, next_check = chunks.Reassembler(), 0.0
        while not self._stop.is_set():
            if select.select([self.conn], [], [], 0.1)[0]:
                self.conn.poll()
            for note in self.conn.notifies:
                if note.payload.startswith(self.exec_id + "|"):
                    self.payloads += 1
                    whole = joiner.feed(note.payload)
                    if whole is not None:
                        self.texts.append(whole[1])
            self.conn.notifies.clear()
            if time.monotonic() > next_check:  # how full PostgreSQL's NOTIFY queue got
                with self.conn.cursor() as cur:
                    cur.execute("SELECT pg_notification_queue_usage()")
                    self.queue_peak = max(self.queue_peak, float(t.cast(tuple[float], cur.fetchone())[0]))
                next_check = time.monotonic() + 0.5

    def stop(self) -> list[int]:
        """The CRC-32 of each chunk seen, in order."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)
        return [zlib.crc32(text.encode()) for text in self.texts]

    def close(self) -> None:
        self.stop()
        self.conn.close()
