"""A real nginx for live tests, running a server block the docs print.

nginx comes from the distribution (`.ci/run` installs it); without it a test
is skipped, except under CI, where that is a failure.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import time
import typing as t
from pathlib import Path

import pytest
import requests

from tests.conftest import free_port


def binary() -> str:
    found = shutil.which("nginx") or next((p for p in ("/usr/sbin/nginx",) if Path(p).exists()), None)
    if found is None:
        if os.environ.get("CI"):
            pytest.fail("nginx is not installed; .ci/run installs it (nginx-light)")
        pytest.skip("nginx is not installed (apt-get install nginx-light)")
    return found


@contextlib.contextmanager
def running(render: t.Callable[[int], str], prefix: Path, ready_path: str = "/healthz") -> t.Iterator[str]:
    """nginx serving ``render(port)`` (an http-block snippet) on a free port; its base URL.

    gzip is on for everything, so a test shows that the snippet itself turns it off for streams.
    """
    nginx = binary()
    prefix.mkdir(parents=True, exist_ok=True)
    prefix.chmod(0o755)  # nginx's workers may run as another user
    port = free_port()
    (prefix / "site.conf").write_text(render(port))
    user = "user root;\n" if os.geteuid() == 0 else ""
    (prefix / "nginx.conf").write_text(
        f"{user}daemon off;\nworker_processes 1;\npid {prefix}/nginx.pid;\nerror_log {prefix}/error.log;\n"
        "events {}\n"
        f"http {{\n access_log off;\n client_body_temp_path {prefix}/body;\n proxy_temp_path {prefix}/proxy;\n"
        f" fastcgi_temp_path {prefix}/fcgi;\n uwsgi_temp_path {prefix}/uwsgi;\n scgi_temp_path {prefix}/scgi;\n"
        f" gzip on;\n gzip_proxied any;\n gzip_types text/event-stream application/json;\n gzip_min_length 1;\n"
        f" include {prefix}/site.conf;\n}}\n"
    )
    process = subprocess.Popen(
        [nginx, "-p", str(prefix), "-c", str(prefix / "nginx.conf")], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    url = f"http://127.0.0.1:{port}"
    try:
        end = time.monotonic() + 20
        while True:
            with contextlib.suppress(requests.RequestException):
                if requests.get(url + ready_path, timeout=1).status_code == 200:
                    break
            if process.poll() is not None or time.monotonic() > end:
                error_log = (prefix / "error.log").read_text() if (prefix / "error.log").exists() else ""
                raise RuntimeError(f"nginx did not start: {process.stderr.read()!r} {error_log}")  # type: ignore[union-attr]
            time.sleep(0.1)
        yield url
    finally:
        process.terminate()
        process.wait(10)
