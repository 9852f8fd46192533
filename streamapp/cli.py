"""``flask db|users|tokens|events`` commands (SPEC §9). Output is the result only."""

from __future__ import annotations

import typing as t

import click
from flask.cli import AppGroup

from . import accounts
from . import migrate
from . import retention
from .errors import StreamappError
from .state import current_state

db_group = AppGroup("db", help="Database schema.")
users_group = AppGroup("users", help="Users of the standalone service.")
tokens_group = AppGroup("tokens", help="API tokens.")
events_group = AppGroup("events", help="Stored events.")
GROUPS = (db_group, users_group, tokens_group, events_group)


class _Failed(click.ClickException):
    """A command that could not do its job (exit 1), with the reason."""


T = t.TypeVar("T")


def _run(action: t.Callable[[t.Any], T]) -> T:
    try:
        with current_state().db.transaction() as cur:
            return action(cur)
    except StreamappError as exc:
        raise _Failed(exc.message) from None


@db_group.command("upgrade")
def db_upgrade() -> None:
    """Apply pending migrations."""
    applied = migrate.upgrade(current_state().db)
    click.echo("\n".join(f"applied {name}" for name in applied) or "already up to date")


@db_group.command("url")
def db_url() -> None:
    """Print the database URL this app uses (the embedded one under ./var/ in development).

    A script that appends inside its own transaction needs it; the embedded
    server's address is chosen at its first start, so it cannot be guessed.
    """
    click.echo(current_state().settings.database_url)


@users_group.command("create")
@click.argument("email")
@click.option("--password", required=True, help="At least 8 characters.")
@click.option("--admin", is_flag=True, help="May read every execution.")
def users_create(email: str, password: str, admin: bool) -> None:
    """Create a user."""
    user = _run(lambda cur: accounts.create_user(cur, email, password, admin=admin))
    click.echo(f"created user {user.email} (id {user.id}{', admin' if user.is_admin else ''})")


@users_group.command("disable")
@click.argument("email")
def users_disable(email: str) -> None:
    """Disable a user: their sessions and tokens stop working."""
    _run(lambda cur: accounts.disable_user(cur, email))
    click.echo(f"disabled {email}")


def _scopes(ctx: click.Context, param: click.Parameter, value: str) -> frozenset[str]:
    try:
        return accounts.expand_scopes(value.split(","))
    except StreamappError as exc:
        raise click.BadParameter(exc.message) from None


@tokens_group.command("create")
@click.argument("email")
@click.option("--scope", "scopes", default="read", callback=_scopes, help="read, publish or read,publish")
def tokens_create(email: str, scopes: frozenset[str]) -> None:
    """Create a token; it is printed once, alone on the last line."""

    def create(cur):  # type: ignore[no-untyped-def]
        user = accounts.find_user(cur, email)
        if user is None:
            raise _Failed(f"no user with email {email}")
        return accounts.create_token(cur, user.id, scopes)

    token = _run(create)
    click.echo(f"token for {email} with scopes {','.join(sorted(scopes))} (shown once):")
    click.echo(token)


@tokens_group.command("revoke")
@click.argument("prefix")
def tokens_revoke(prefix: str) -> None:
    """Revoke a token by its prefix."""
    _run(lambda cur: accounts.revoke_token(cur, prefix))
    click.echo(f"revoked {prefix}")


def _age(ctx: click.Context, param: click.Parameter, value: str) -> int:
    try:
        return retention.parse_age(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


@events_group.command("prune")
@click.option("--older-than", "older_than_s", required=True, callback=_age, help="Ns, Nm, Nh or Nd, like 7d.")
@click.option(
    "--batch-size",
    default=retention.BATCH_SIZE,
    show_default=True,
    type=click.IntRange(1, 100_000),
    help="Events deleted per transaction.",
)
def events_prune(older_than_s: int, batch_size: int) -> None:
    """Delete the events of executions that ended before the cutoff; their rows stay (SPEC §9).

    Small transactions that never block appends: safe to run on a live service.
    """
    pruned = retention.prune(current_state().db, older_than_s, batch_size=batch_size)
    click.echo(f"removed {pruned.events} events of {pruned.executions} ended executions")
