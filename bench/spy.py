"""py-spy on the server's worker during a measured phase: the raw samples kept, shares printed.

Shares are inclusive (a sample counts for every function on its stack) and of the
worker's samples taken while it ran Python; ``--nonblocking`` keeps py-spy from
pausing the worker it measures.
"""

from __future__ import annotations

import collections
import re
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^()]*?)(?::\d+)?\)$")


def record(pid: int, seconds: float, out: Path, rate: int = 100) -> subprocess.Popen[bytes] | None:
    """Start ``py-spy record`` on ``pid``; None when py-spy is not installed next to this Python."""
    spy = shutil.which("py-spy", path=str(Path(sys.executable).parent))
    if spy is None:
        return None
    cmd = [
        spy,
        "record",
        "--pid",
        str(pid),
        "--duration",
        str(max(1, int(seconds))),
        "--rate",
        str(rate),
        "--format",
        "raw",
        "--nonblocking",
        "--output",
        str(out),
    ]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _samples(path: Path) -> list[tuple[str, int]]:
    out = []
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if stack and count.isdigit():
            out.append((stack, int(count)))
    return out


def shares(path: Path, markers: Sequence[str]) -> dict[str, float]:
    """Percent of samples whose stack holds each marker (a substring of a frame)."""
    samples = _samples(path)
    total = sum(n for _, n in samples) or 1
    return {m: 100.0 * sum(n for stack, n in samples if m in stack) / total for m in markers}


def top(path: Path, count: int = 20) -> list[tuple[str, float]]:
    """The functions with the largest inclusive share: ``func (file)``, percent."""
    samples = _samples(path)
    total = sum(n for _, n in samples) or 1
    inclusive: collections.Counter[str] = collections.Counter()
    for stack, n in samples:
        names = set()
        for frame in stack.split(";"):
            match = _FRAME.match(frame)
            if match:
                names.add(f"{match['func']} ({match['file'].rsplit('/', 1)[-1]})")
        for name in names:
            inclusive[name] += n
    return [(name, 100.0 * n / total) for name, n in inclusive.most_common(count)]
