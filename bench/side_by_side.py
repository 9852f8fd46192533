"""Several servers of ``../shared/bench`` at once, for measurements interleaved across them.

Changes too small for the noise between whole runs of ``run.sh`` show when one busy moment of
the machine hits every server alike. Each server is one worker started by the shared bench's
own ``Server`` class (so ours runs exactly as there), with a database of its own. A server is
``NAME=PEER`` (``flaskhub``, ``starlette``, …) or ``NAME=ours:CHECKOUT[:KEY=VALUE,...]``.
Run the scenarios with the shared bench's interpreter (``run.sh`` makes it on first use).
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
import typing as t
from pathlib import Path

SHARED = Path(__file__).resolve().parent.parent.parent / "shared" / "bench"


def add_arguments(ap: argparse.ArgumentParser) -> None:
    """The servers to start and where the shared bench is."""
    ap.add_argument("servers", nargs="+", help="NAME=PEER or NAME=ours:CHECKOUT[:KEY=VALUE,...]")
    ap.add_argument("--shared", type=Path, default=SHARED, help=f"the comparison bench (default {SHARED})")


def shared_modules(shared: Path) -> t.Any:
    """The shared bench's ``run`` module (its ``Server``, ``Postgres``, ``STREAM_PATH``)."""
    sys.path.insert(0, str(shared))
    import run

    return run


class Side(t.NamedTuple):
    name: str
    server: t.Any  # the shared bench's run.Server: port, headers, proc
    db: str  # its database, on ``pg``
    pg: t.Any  # the shared bench's run.Postgres


@contextlib.contextmanager
def started(args: argparse.Namespace, prefix: str) -> t.Iterator[list[Side]]:
    """Start every server of ``args.servers``, each on a fresh database of its own.

    The servers are stopped on the way out; their logs stay in a temporary directory.
    """
    run = shared_modules(args.shared)
    logs = Path(tempfile.mkdtemp(prefix=f"{prefix}-"))
    pg = run.Postgres()
    servers: list[Side] = []
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
            db = f"{prefix}{n}"
            pg.recreate(db)
            server = run.Server(system, pg.url_for(db), run.free_port(), logs / f"{name}.log", opts)
            server.prepare()
            servers.append(Side(name, server, db, pg))
            server.start()
        yield servers
    finally:
        for side in servers:
            side.server.stop()


def percentiles(values: t.Sequence[float], qs: t.Sequence[float] = (0.5, 0.95, 0.99), fmt: str = "{:.3f}") -> str:
    """``values`` at each quantile of ``qs``, nearest rank, joined by " / "."""
    ordered = sorted(values)
    return " / ".join(fmt.format(ordered[min(len(ordered) - 1, int(len(ordered) * q))]) for q in qs)
