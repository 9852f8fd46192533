"""Migrations: ``migrations/NNNN_*.sql`` applied in order, each once, under an advisory lock."""

from __future__ import annotations

import logging
import re
from pathlib import Path

from .db import Database

log = logging.getLogger(__name__)


def _migrations_dir() -> Path:
    # An installed package carries them as streamapp/migrations (pyproject.toml); a checkout
    # keeps them at its top level, as the house layout fixes.
    package = Path(__file__).resolve().parent
    inside = package / "migrations"
    return inside if inside.is_dir() else package.parent / "migrations"


MIGRATIONS_DIR = _migrations_dir()
_NAME = re.compile(r"(\d{4})_[a-z0-9_]+\.sql")
#: Any fixed number shared by every process that migrates this database.
_LOCK_KEY = 0x5354524D  # "STRM"

_CREATE_TABLE = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version    text PRIMARY KEY,
    applied_at timestamptz NOT NULL DEFAULT now()
)
"""
_SELECT_APPLIED = "SELECT version FROM schema_migrations"
_INSERT_APPLIED = "INSERT INTO schema_migrations (version) VALUES (%(version)s)"


class MigrationError(Exception):
    """The migrations folder is not in a state we can apply."""


def pending_files(directory: Path = MIGRATIONS_DIR) -> list[Path]:
    """Every migration file, in order.

    :raises MigrationError: for a misnamed file or a repeated number.
    """
    files = sorted(p for p in directory.iterdir() if p.suffix == ".sql")
    seen: set[str] = set()
    for path in files:
        match = _NAME.fullmatch(path.name)
        if not match:
            raise MigrationError(f"{path.name}: migration files are named NNNN_name.sql")
        if match.group(1) in seen:
            raise MigrationError(f"{path.name}: migration number {match.group(1)} is used twice")
        seen.add(match.group(1))
    return files


def upgrade(db: Database, directory: Path = MIGRATIONS_DIR) -> list[str]:
    """Apply every migration not yet applied; return the names applied.

    Each file runs in its own transaction with its bookkeeping row, so a
    failing file leaves the database as it was before that file.
    """
    files = pending_files(directory)
    applied_now: list[str] = []
    with db.connection() as conn:
        conn.autocommit = True
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT pg_advisory_lock(%s)", (_LOCK_KEY,))
                try:
                    cur.execute(_CREATE_TABLE)
                    cur.execute(_SELECT_APPLIED)
                    done = {row[0] for row in cur.fetchall()}
                    for path in files:
                        version = path.stem
                        if version in done:
                            continue
                        cur.execute("BEGIN")
                        cur.execute(path.read_text())
                        cur.execute(_INSERT_APPLIED, {"version": version})
                        cur.execute("COMMIT")
                        applied_now.append(version)
                        log.info("applied migration %s", version)
                finally:
                    if not conn.closed:
                        if conn.info.transaction_status != 0:
                            cur.execute("ROLLBACK")
                        cur.execute("SELECT pg_advisory_unlock(%s)", (_LOCK_KEY,))
        finally:
            if not conn.closed:
                conn.autocommit = False
    return applied_now
