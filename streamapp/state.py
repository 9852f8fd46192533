"""Per-app state, kept in ``app.extensions["streamapp"]`` (never on a module)."""

from __future__ import annotations

import dataclasses
import typing as t
from collections.abc import Callable

from flask import current_app

from .redact import Redactor

if t.TYPE_CHECKING:
    from .config import Settings
    from .db import Database
    from .hub import Hub
    from .producer import Producer
    from .tickets import Tickets
    from .token_cache import TokenCache

Authorize = Callable[[t.Any, dict[str, t.Any]], bool]
EXTENSION_KEY = "streamapp"


def owner_or_admin(user: t.Any, execution: dict[str, t.Any]) -> bool:
    """The default authorization rule (SPEC §7): the owner, or an admin."""
    return bool(getattr(user, "is_admin", False)) or execution["owner_id"] == str(user.get_id())


@dataclasses.dataclass
class State:
    settings: Settings
    db: Database
    producer: Producer
    hub: Hub
    #: Tickets for ``?ticket=`` on streams (SPEC §7); ``None`` only without a secret key.
    tickets: Tickets | None = None
    #: Applied to every appended event and text chunk before it is stored or sent (SPEC §7).
    redactor: Redactor = dataclasses.field(default_factory=Redactor)
    authorize: Authorize = owner_or_admin
    own_users: bool = True
    #: Bearer tokens this worker checked lately (issue 10); ``None`` in extension mode.
    token_cache: TokenCache | None = None
    url_prefix: str = "/api/v0"


def current_state() -> State:
    """The streamapp state of the current Flask app."""
    return t.cast(State, current_app.extensions[EXTENSION_KEY])
