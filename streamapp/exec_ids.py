"""Execution ids: the one pattern every layer holds them to, and how new ones are made (SPEC §2).

Pure: no I/O, no Flask. The producer, the request schemas and the lookups of the
http layer all import the pattern from here, so an id one accepts the others do too.
"""

from __future__ import annotations

import re
import secrets

#: URL-safe and at most 64 characters (SPEC §2); always matched whole (``fullmatch``).
EXEC_ID_PATTERN = re.compile(r"[A-Za-z0-9_-]{1,64}")
#: What a refused exec_id is told, wherever it is refused.
EXEC_ID_RULE = "must be 1-64 characters of A-Z, a-z, 0-9, '_' and '-'"


def new_exec_id() -> str:
    """A fresh, unguessable, URL-safe execution id (128 random bits)."""
    return secrets.token_urlsafe(16)
