"""Migrations: in order, each once, under an advisory lock (SPEC §9)."""

from __future__ import annotations

import threading
import time

import psycopg2
import pytest

from streamapp import migrate
from streamapp.db import Database
from streamapp.migrate import MigrationError

FILES = {
    "0001_items.sql": "CREATE TABLE items (id int PRIMARY KEY);",
    "0002_more.sql": "ALTER TABLE items ADD COLUMN name text; INSERT INTO items VALUES (1, 'one');",
}


@pytest.fixture
def empty_db(empty_database):
    db = Database(empty_database, 2)
    yield db
    db.close()


def _folder(tmp_path, files: dict[str, str]):
    for name, sql in files.items():
        (tmp_path / name).write_text(sql)
    return tmp_path


def _query(db: Database, sql: str) -> list[tuple]:
    with db.transaction() as cur:
        cur.execute(sql)
        return cur.fetchall()


def _applied(db: Database) -> list[str]:
    return [row[0] for row in _query(db, "SELECT version FROM schema_migrations ORDER BY version")]


def test_upgrade_applies_each_file_in_order(empty_db, tmp_path):
    assert migrate.upgrade(empty_db, _folder(tmp_path, FILES)) == ["0001_items", "0002_more"]
    assert _query(empty_db, "SELECT id, name FROM items") == [(1, "one")]
    assert _applied(empty_db) == ["0001_items", "0002_more"]


def test_second_upgrade_applies_nothing(empty_db, tmp_path):
    folder = _folder(tmp_path, FILES)
    migrate.upgrade(empty_db, folder)
    assert migrate.upgrade(empty_db, folder) == []
    assert _query(empty_db, "SELECT count(*) FROM items") == [(1,)]


def test_new_file_is_applied_alone(empty_db, tmp_path):
    folder = _folder(tmp_path, FILES)
    migrate.upgrade(empty_db, folder)
    _folder(tmp_path, {"0003_third.sql": "INSERT INTO items VALUES (3, 'three');"})
    assert migrate.upgrade(empty_db, folder) == ["0003_third"]
    assert _query(empty_db, "SELECT id FROM items ORDER BY id") == [(1,), (3,)]


def test_other_files_are_ignored(empty_db, tmp_path):
    folder = _folder(tmp_path, {**FILES, "README.md": "notes", "0003_draft.sql.bak": "nonsense"})
    assert migrate.upgrade(empty_db, folder) == ["0001_items", "0002_more"]


def test_failing_file_leaves_the_database_as_before_it(empty_db, tmp_path):
    folder = _folder(tmp_path, {**FILES, "0003_broken.sql": "INSERT INTO items VALUES (3, 'x'); SELECT nope;"})
    with pytest.raises(psycopg2.Error):
        migrate.upgrade(empty_db, folder)
    assert _applied(empty_db) == ["0001_items", "0002_more"]
    assert _query(empty_db, "SELECT id FROM items") == [(1,)]
    (folder / "0003_broken.sql").write_text("INSERT INTO items VALUES (3, 'x');")
    assert migrate.upgrade(empty_db, folder) == ["0003_broken"]


def test_failure_releases_the_lock(empty_db, tmp_path):
    folder = _folder(tmp_path, {"0001_broken.sql": "SELECT nope;"})
    with pytest.raises(psycopg2.Error):
        migrate.upgrade(empty_db, folder)
    held = "SELECT count(*) FROM pg_locks l JOIN pg_database d ON d.oid = l.database"
    held += " WHERE l.locktype = 'advisory' AND d.datname = current_database()"
    assert _query(empty_db, held) == [(0,)]


@pytest.mark.parametrize(
    "names",
    [
        ["1_items.sql"],
        ["0001-items.sql"],
        ["0001_Items.sql"],
        ["00001_items.sql"],
        ["0001_.sql"],
        ["0001 items.sql"],
        ["items.sql"],
        ["0001_items.sql", "0001_other.sql"],
        ["0001_items.sql", "0002_b.sql", "0002_c.sql"],
    ],
)
def test_misnamed_or_repeated_files_raise(empty_db, tmp_path, names):
    folder = _folder(tmp_path, {name: "CREATE TABLE t (id int);" for name in names})
    with pytest.raises(MigrationError):
        migrate.pending_files(folder)
    with pytest.raises(MigrationError):
        migrate.upgrade(empty_db, folder)
    assert _query(empty_db, "SELECT to_regclass('schema_migrations')") == [(None,)]


def test_project_migrations_are_well_formed():
    files = migrate.pending_files()
    assert files and files[0].name == "0001_initial.sql"
    assert [f.name for f in files] == sorted(f.name for f in files)


def _waiting_for_advisory_lock(db: Database) -> int:
    rows = _query(
        db,
        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
        " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
    )
    return int(rows[0][0])


def test_concurrent_upgrades_apply_each_file_once(empty_database, empty_db, tmp_path):
    # Not idempotent on purpose: applying a file twice would fail.
    folder = _folder(tmp_path, {**FILES, "0003_third.sql": "INSERT INTO items VALUES (3, 'three');"})
    results: list[list[str]] = []
    errors: list[BaseException] = []

    def run() -> None:
        db = Database(empty_database, 1)
        try:
            results.append(migrate.upgrade(db, folder))
        except BaseException as exc:  # surfaced below
            errors.append(exc)
        finally:
            db.close()

    holder = psycopg2.connect(empty_database)
    holder.autocommit = True
    with holder.cursor() as cur:
        # Hold the lock so both upgrades are queued on it before either may start.
        cur.execute("SELECT pg_advisory_lock(%s)", (migrate._LOCK_KEY,))
        threads = [threading.Thread(target=run) for _ in range(2)]
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + 30
        while _waiting_for_advisory_lock(empty_db) < 2:
            assert time.monotonic() < deadline, "the upgrades never queued on the advisory lock"
        cur.execute("SELECT pg_advisory_unlock(%s)", (migrate._LOCK_KEY,))
    holder.close()
    for thread in threads:
        thread.join(60)
    assert errors == []
    assert sorted(results) == [[], ["0001_items", "0002_more", "0003_third"]]
    assert _applied(empty_db) == ["0001_items", "0002_more", "0003_third"]
    assert _query(empty_db, "SELECT id FROM items ORDER BY id") == [(1,), (3,)]
