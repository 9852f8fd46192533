"""Per-app state, kept in ``app.extensions["streamapp"]`` (never on a module)."""

from __future__ import annotations

import dataclasses
import typing as t
from collections.abc import Callable

from flask import current_app

from .redact import Redactor

#: Who may read an execution: ``authorize(user, execution)``; a host app may bring its own (SPEC §7).
Authorize = Callable[[t.Any, "Execution"], bool]

if t.TYPE_CHECKING:
    from .config import Settings
    from .cursor import Cursors
    from .db import Database
    from .hub import Hub
    from .producer import Producer
    from .storage import Execution
    from .tickets import Tickets
    from .token_cache import TokenCache

EXTENSION_KEY = "streamapp"


@dataclasses.dataclass
class State:
    settings: Settings
    db: Database
    producer: Producer
    hub: Hub
    #: Who may read an execution (SPEC §7): ``auth.owner_or_admin``, or the host app's rule.
    authorize: Authorize
    #: Tickets for ``?ticket=`` on streams (SPEC §7); ``None`` only without a secret key.
    tickets: Tickets | None = None
    #: Cursor tokens of multiplexed streams (SPEC §5.6); ``None`` only without a secret key.
    cursors: Cursors | None = None
    #: Applied to every appended event and text chunk before it is stored or sent (SPEC §7).
    redactor: Redactor = dataclasses.field(default_factory=Redactor)
    own_users: bool = True
    #: Bearer tokens this worker checked lately (issue 10); ``None`` in extension mode.
    token_cache: TokenCache | None = None
    url_prefix: str = "/api/v0"

    def close(self) -> None:
        """Stop the hub (its listener and loops) and close the pool: for apps built and thrown away, as in tests."""
        self.hub.stop()
        self.db.close()


def current_state() -> State:
    """The streamapp state of the current Flask app."""
    return t.cast(State, current_app.extensions[EXTENSION_KEY])
