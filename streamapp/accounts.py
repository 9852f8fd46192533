"""Users and API tokens of the standalone service: SQL, hashing, scopes, revocation (SPEC §7).

Passwords are hashed with werkzeug's salted scrypt. Tokens are 256 random
bits, so a plain SHA-256 of them is safe at rest and cheap enough to check on
every request; only a short, non-secret prefix is kept in the clear, to find
and revoke a token.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import hmac
import secrets
import typing as t

from werkzeug.security import check_password_hash
from werkzeug.security import generate_password_hash

from .errors import Conflict
from .errors import Invalid
from .errors import NotFound

if t.TYPE_CHECKING:
    from psycopg2.extensions import cursor as Cursor

SCOPES = ("read", "publish")
TOKEN_MARK = "sa_"
_PREFIX_BYTES = 6
#: Write last_used_at at most this often per token, not on every request.
LAST_USED_GRANULARITY = datetime.timedelta(seconds=60)


@dataclasses.dataclass(frozen=True)
class User:
    """A user as Flask-Login sees it; ``scopes`` are the credential's, not the user's."""

    id: int
    email: str
    is_admin: bool
    disabled: bool
    scopes: frozenset[str] = frozenset(SCOPES)
    token_prefix: str | None = None

    # Flask-Login's user interface.
    is_authenticated = True
    is_anonymous = False

    @property
    def is_active(self) -> bool:
        return not self.disabled

    def get_id(self) -> str:
        return str(self.id)


def expand_scopes(scopes: t.Iterable[str]) -> frozenset[str]:
    """Validate scopes; ``publish`` implies ``read``.

    :raises Invalid: for an unknown or empty scope list.
    """
    chosen = {s.strip() for s in scopes if s.strip()}
    unknown = chosen - set(SCOPES)
    if unknown or not chosen:
        raise Invalid(f"scopes must be a non-empty list of {', '.join(SCOPES)}")
    if "publish" in chosen:
        chosen.add("read")
    return frozenset(chosen)


def _user(row: t.Any) -> User:
    """A ``User`` from the ``_USER_COLUMNS`` of a row."""
    user_id, email, is_admin, disabled = row[:4]
    return User(user_id, email, is_admin, disabled)


_USER_COLUMNS = "id, email, is_admin, disabled_at IS NOT NULL"
# A taken email inserts nothing and returns no row, instead of failing in the database
# with the statement in its log (SPEC §2); users_email_key is the unique index on lower(email).
_INSERT_USER = f"""
INSERT INTO users (email, password_hash, is_admin) VALUES (%(email)s, %(hash)s, %(admin)s)
ON CONFLICT ((lower(email))) DO NOTHING
RETURNING {_USER_COLUMNS}
"""


def create_user(cur: Cursor, email: str, password: str, *, admin: bool = False) -> User:
    """Create a user.

    :raises Invalid: for an empty email or a password under 8 characters.
    :raises Conflict: if the email is taken.
    """
    email = email.strip()
    if "@" not in email or len(email) > 254:
        raise Invalid("email must be an email address")
    if len(password) < 8:
        raise Invalid("password must be at least 8 characters")
    cur.execute(_INSERT_USER, {"email": email, "hash": generate_password_hash(password), "admin": admin})
    row = cur.fetchone()
    if row is None:
        raise Conflict(f"a user with email {email} already exists")
    return _user(row)


_SELECT_USER_BY_ID = f"SELECT {_USER_COLUMNS} FROM users WHERE id = %(id)s"


def get_user(cur: Cursor, user_id: int) -> User | None:
    cur.execute(_SELECT_USER_BY_ID, {"id": user_id})
    row = cur.fetchone()
    return User(*row) if row else None


_SELECT_USER_BY_EMAIL = f"SELECT {_USER_COLUMNS}, password_hash FROM users WHERE lower(email) = lower(%(email)s)"


def find_user(cur: Cursor, email: str) -> User | None:
    cur.execute(_SELECT_USER_BY_EMAIL, {"email": email.strip()})
    row = cur.fetchone()
    return User(*row[:4]) if row else None


def check_password(cur: Cursor, email: str, password: str) -> User | None:
    """The active user with this email and password, else ``None`` (one answer for both)."""
    cur.execute(_SELECT_USER_BY_EMAIL, {"email": email.strip()})
    row = cur.fetchone()
    if row is None:
        # Spend the same time as a real check, so timing does not reveal accounts.
        check_password_hash(_DUMMY_HASH, password)
        return None
    if not check_password_hash(row[4], password) or row[3]:
        return None
    return User(*row[:4])


_DUMMY_HASH = generate_password_hash(secrets.token_urlsafe(16))

_DISABLE_USER = "UPDATE users SET disabled_at = now() WHERE lower(email) = lower(%(email)s) AND disabled_at IS NULL"


def disable_user(cur: Cursor, email: str) -> None:
    """Disable a user: their sessions and tokens stop working.

    :raises NotFound: no such user.
    """
    user = find_user(cur, email)
    if user is None:
        raise NotFound(f"no user with email {email}")
    cur.execute(_DISABLE_USER, {"email": email})
    _announce(cur, f"user:{user.id}")


#: Revocations and disabled users, announced to every worker's token cache on commit (issue 10).
AUTH_CHANNEL = "streamapp_auth"


def _announce(cur: Cursor, change: str) -> None:
    cur.execute("SELECT pg_notify(%s, %s)", (AUTH_CHANNEL, change))


def _hash(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


@dataclasses.dataclass(frozen=True)
class TokenInfo:
    """What may be shown about a token: never its secret part or its hash."""

    prefix: str
    scopes: tuple[str, ...]
    created_at: datetime.datetime
    last_used_at: datetime.datetime | None
    revoked_at: datetime.datetime | None


_TOKEN_INFO_COLUMNS = "prefix, scopes, created_at, last_used_at, revoked_at"
_INSERT_TOKEN = f"""
INSERT INTO api_tokens (user_id, prefix, token_hash, scopes)
VALUES (%(user_id)s, %(prefix)s, %(hash)s, %(scopes)s)
RETURNING {_TOKEN_INFO_COLUMNS}
"""


def _token_info(row: tuple[t.Any, ...]) -> TokenInfo:
    prefix, scopes, created_at, last_used_at, revoked_at = row
    return TokenInfo(prefix, tuple(scopes), created_at, last_used_at, revoked_at)


def new_token(cur: Cursor, user_id: int, scopes: t.Iterable[str]) -> tuple[str, TokenInfo]:
    """Create a token; return it in full (it is shown once, never stored) with what is stored.

    :raises Invalid: for an unknown or empty scope list.
    """
    chosen = expand_scopes(scopes)
    prefix = secrets.token_hex(_PREFIX_BYTES)
    token = f"{TOKEN_MARK}{prefix}_{secrets.token_urlsafe(32)}"
    cur.execute(
        _INSERT_TOKEN,
        {"user_id": user_id, "prefix": prefix, "hash": _hash(token), "scopes": sorted(chosen)},
    )
    return token, _token_info(t.cast(tuple[t.Any, ...], cur.fetchone()))


def create_token(cur: Cursor, user_id: int, scopes: t.Iterable[str]) -> str:
    """Create a token; return it in full (it is shown once, never stored)."""
    return new_token(cur, user_id, scopes)[0]


_SELECT_TOKENS = f"""
SELECT {_TOKEN_INFO_COLUMNS} FROM api_tokens WHERE user_id = %(user_id)s ORDER BY created_at DESC, id DESC
"""


def list_tokens(cur: Cursor, user_id: int) -> list[TokenInfo]:
    """Every token of a user, live and revoked, newest first."""
    cur.execute(_SELECT_TOKENS, {"user_id": user_id})
    return [_token_info(row) for row in cur.fetchall()]


def is_prefix(value: str) -> bool:
    """Whether ``value`` has the shape of a token prefix (not a whole token)."""
    return len(value) == 2 * _PREFIX_BYTES and all(c in "0123456789abcdef" for c in value)


def token_prefix(token: str) -> str | None:
    """The prefix of a well-formed token, else ``None``."""
    if not token.startswith(TOKEN_MARK):
        return None
    prefix, sep, _ = token[len(TOKEN_MARK) :].partition("_")
    return prefix if sep and len(prefix) == 2 * _PREFIX_BYTES else None


_SELECT_TOKEN = f"""
SELECT t.id, t.token_hash, t.scopes, t.last_used_at, u.{_USER_COLUMNS.replace(", ", ", u.")}
FROM api_tokens t JOIN users u ON u.id = t.user_id
WHERE t.prefix = %(prefix)s AND t.revoked_at IS NULL
"""
_TOUCH_TOKEN = "UPDATE api_tokens SET last_used_at = now() WHERE id = %(id)s"


def authenticate_token(cur: Cursor, token: str) -> User | None:
    """The active user a live token belongs to, with the token's scopes; else ``None``."""
    prefix = token_prefix(token)
    if prefix is None:
        return None
    cur.execute(_SELECT_TOKEN, {"prefix": prefix})
    row = cur.fetchone()
    if row is None or not hmac.compare_digest(bytes(row[1]), _hash(token)):
        return None
    token_id, _, scopes, last_used = row[:4]
    user = dataclasses.replace(_user(row[4:]), scopes=frozenset(scopes), token_prefix=prefix)
    if user.disabled:
        return None
    now = datetime.datetime.now(datetime.UTC)
    if last_used is None or now - last_used > LAST_USED_GRANULARITY:
        cur.execute(_TOUCH_TOKEN, {"id": token_id})
    return user


_REVOKE_TOKEN = """
UPDATE api_tokens SET revoked_at = now()
WHERE prefix = %(prefix)s AND revoked_at IS NULL AND (%(user_id)s::bigint IS NULL OR user_id = %(user_id)s)
"""


def revoke_token(cur: Cursor, prefix: str, *, user_id: int | None = None) -> None:
    """Revoke a token by prefix (or by the whole token); only ``user_id``'s when given.

    :raises NotFound: no live token with that prefix (for that user).
    """
    prefix = token_prefix(prefix) or prefix
    cur.execute(_REVOKE_TOKEN, {"prefix": prefix, "user_id": user_id})
    if cur.rowcount == 0:
        raise NotFound("no live token with that prefix")
    _announce(cur, f"token:{prefix}")


_SELECT_REVOKED = """
SELECT 'user', id::text FROM users WHERE id = ANY(%(user_ids)s::bigint[]) AND disabled_at IS NOT NULL
UNION ALL
SELECT 'token', prefix FROM api_tokens WHERE prefix = ANY(%(prefixes)s::text[]) AND revoked_at IS NOT NULL
"""


def revoked(cur: Cursor, user_ids: t.Iterable[str], prefixes: t.Iterable[str]) -> tuple[set[str], set[str]]:
    """Of these users and token prefixes, the disabled users and the revoked tokens (one query)."""
    ids = [u for u in user_ids if u.isdigit()]
    cur.execute(_SELECT_REVOKED, {"user_ids": ids, "prefixes": list(prefixes)})
    users: set[str] = set()
    tokens: set[str] = set()
    for what, key in cur.fetchall():
        (users if what == "user" else tokens).add(key)
    return users, tokens
