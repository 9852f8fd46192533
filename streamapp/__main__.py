"""``python -m streamapp``: the same command-line client as the ``streamapp`` script."""

from __future__ import annotations

from .follow_cli import main

raise SystemExit(main())
