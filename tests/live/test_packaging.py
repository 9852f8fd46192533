"""pyproject.toml: a client-only install pulls in nothing; the ``server`` extra matches requirements.txt (SPEC §6)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.conftest import ROOT

SERVER_SIDE = ("flask", "werkzeug", "gevent", "psycopg2", "gunicorn", "marshmallow", "jsonschema")


def _pins() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "requirements.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            pins[canonicalize_name(name)] = version
    return pins


def _server_extra() -> dict[str, Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["dependencies"] == []  # the client needs nothing
    return {canonicalize_name(r.name): r for r in map(Requirement, project["optional-dependencies"]["server"])}


def test_server_extra_names_the_packages_of_requirements_txt():
    pins, extra = _pins(), _server_extra()
    assert sorted(extra) == sorted(pins)
    # The ranges admit the tested pins.
    assert {name: req.specifier.contains(pins[name]) for name, req in extra.items()} == dict.fromkeys(pins, True)


@pytest.fixture(scope="module")
def client_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh virtualenv with ``pip install <project>`` (no extra), built from a copy of the sources.

    The copy keeps the build's ``build/`` and ``*.egg-info`` out of the shared working tree.
    """
    tmp = tmp_path_factory.mktemp("packaging")
    source = tmp / "src"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    shutil.copytree(ROOT / "migrations", source / "migrations")
    shutil.copytree(ROOT / "streamapp", source / "streamapp", ignore=shutil.ignore_patterns("__pycache__"))
    venv = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=60)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "--disable-pip-version-check", "--no-input"]
    subprocess.run([*pip, "install", "--quiet", str(source)], check=True, timeout=120, cwd=tmp)
    return venv


def _run(venv: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    # cwd outside the repository, so nothing is imported from the working tree.
    return subprocess.run(args, cwd=venv, capture_output=True, text=True, timeout=60, env=env)


@pytest.mark.live
def test_client_only_install_has_no_dependencies(client_venv):
    listed = _run(client_venv, str(client_venv / "bin" / "python"), "-m", "pip", "list", "--format=json")
    names = {canonicalize_name(p["name"]) for p in json.loads(listed.stdout)}
    assert names - {"pip", "setuptools", "wheel"} == {"streamapp"}


@pytest.mark.live
def test_client_imports_nothing_from_the_server_side(client_venv):
    code = (
        "import sys, streamapp, streamapp.client, streamapp.follow_cli\n"
        "assert streamapp.follow is streamapp.client.follow\n"
        f"print([m for m in {SERVER_SIDE!r} if m in sys.modules], streamapp.__file__)"
    )
    done = _run(client_venv, str(client_venv / "bin" / "python"), "-c", code)
    assert done.returncode == 0, done.stderr
    loaded, path = done.stdout.split("] ")
    assert loaded == "[" and path.strip().startswith(str(client_venv))


@pytest.mark.live
def test_console_script_and_module(client_venv):
    for command in ([str(client_venv / "bin" / "streamapp")], [str(client_venv / "bin" / "python"), "-m", "streamapp"]):
        done = _run(client_venv, *command, "follow", "--help")
        assert done.returncode == 0 and "STREAMAPP_TOKEN" in done.stdout, done.stderr


@pytest.mark.live
def test_static_files_are_installed(client_venv):
    static = ROOT / "streamapp" / "static"
    shipped = sorted(p.relative_to(static) for p in static.rglob("*") if p.is_file()) if static.is_dir() else []
    installed = next((client_venv / "lib").glob("python3*/site-packages/streamapp"))
    assert [p for p in shipped if not (installed / "static" / p).is_file()] == []


@pytest.mark.live
def test_migrations_are_installed_where_migrate_finds_them(client_venv):
    installed = next((client_venv / "lib").glob("python3*/site-packages/streamapp"))
    assert sorted(p.name for p in (installed / "migrations").glob("*.sql")) == sorted(
        p.name for p in (ROOT / "migrations").glob("*.sql")
    )
    # The installed package, imported by an interpreter that has psycopg2: migrate uses its own copy.
    code = "import streamapp.migrate as m; print(m.MIGRATIONS_DIR, m.pending_files()[0].name)"
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=client_venv,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(installed.parent)},
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [str(installed / "migrations"), "0001_initial.sql"]


@pytest.mark.live
def test_installed_command_follows_a_live_stream(client_venv, server, account, workflow, producer):
    producer.append_events(workflow, [{"type": "workflow_status", "data": {"status": "RUNNING"}}])
    producer.append_events(workflow, [{"type": "complete", "data": {"status": "SUCCESS"}}])
    url = server.api(f"/executions/workflows/{workflow}/stream")
    env = {"STREAMAPP_TOKEN": account.token, "PATH": "/usr/bin:/bin"}
    done = _run(client_venv, str(client_venv / "bin" / "streamapp"), "follow", url, env=env)
    assert (done.returncode, done.stdout, done.stderr) == (0, "#1 workflow_status RUNNING\n#2 complete SUCCESS\n", "")
