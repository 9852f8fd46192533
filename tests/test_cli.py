"""``flask db|users|tokens`` through the app's CLI runner (SPEC §9)."""

from __future__ import annotations

import secrets

import psycopg2
import pytest

from streamapp import create_app
from streamapp import migrate

WORKFLOWS = "/api/v0/executions/workflows"


def _email() -> str:
    return f"cli-{secrets.token_hex(5)}@example.com"


def _last_line(output: str) -> str:
    return output.rstrip("\n").rsplit("\n", 1)[-1]


def _create_user(runner, email: str, *extra: str):
    return runner.invoke(args=["users", "create", email, "--password", "long-enough-pw", *extra])


def _create_token(runner, email: str, scope: str = "read,publish") -> str:
    result = runner.invoke(args=["tokens", "create", email, "--scope", scope])
    assert result.exit_code == 0, result.output
    return _last_line(result.output)


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


# -- db -------------------------------------------------------------------------------------------


def test_db_upgrade_on_a_migrated_database(runner):
    for _ in range(2):
        result = runner.invoke(args=["db", "upgrade"])
        assert (result.exit_code, result.output) == (0, "already up to date\n")


def test_db_upgrade_applies_then_is_idempotent(settings, empty_database):
    app = create_app(settings.replace(database_url=empty_database))
    runner = app.test_cli_runner()
    try:
        first = runner.invoke(args=["db", "upgrade"])
        expected = "".join(f"applied {path.stem}\n" for path in migrate.pending_files())
        assert (first.exit_code, first.output) == (0, expected)
        assert first.output.startswith("applied 0001_initial\n")
        second = runner.invoke(args=["db", "upgrade"])
        assert (second.exit_code, second.output) == (0, "already up to date\n")
    finally:
        app.extensions["streamapp"].close()


# -- users ----------------------------------------------------------------------------------------


def test_db_url_prints_the_url_the_app_connects_to(runner, settings):
    result = runner.invoke(args=["db", "url"])
    assert result.exit_code == 0
    url = result.output.strip()
    assert url == settings.database_url
    psycopg2.connect(url).close()


def test_users_create(runner, client):
    email = _email()
    result = _create_user(runner, email)
    assert result.exit_code == 0
    assert result.output.startswith(f"created user {email} (id ") and ", admin" not in result.output
    r = client.post("/api/v0/auth/login", json={"email": email, "password": "long-enough-pw"})
    assert r.status_code == 200 and r.get_json()["is_admin"] is False


def test_users_create_admin(runner, client):
    email = _email()
    result = _create_user(runner, email, "--admin")
    assert result.exit_code == 0 and result.output.endswith(", admin)\n")
    r = client.post("/api/v0/auth/login", json={"email": email, "password": "long-enough-pw"})
    assert r.get_json()["is_admin"] is True


@pytest.mark.parametrize("twice", [lambda e: e, str.upper])
def test_users_create_duplicate_email_fails(runner, twice):
    email = _email()
    assert _create_user(runner, email).exit_code == 0
    result = _create_user(runner, twice(email))
    assert result.exit_code == 1
    assert "already exists" in result.output


@pytest.mark.parametrize(
    "args, message",
    [
        (["--password", "short"], "at least 8 characters"),
        (["--password", ""], "at least 8 characters"),
    ],
)
def test_users_create_short_password_fails(runner, args, message):
    result = runner.invoke(args=["users", "create", _email(), *args])
    assert result.exit_code == 1 and message in result.output


def test_users_create_bad_email_fails(runner):
    result = _create_user(runner, "not-an-email")
    assert result.exit_code == 1 and "email" in result.output


def test_users_create_needs_password(runner):
    result = runner.invoke(args=["users", "create", _email()])
    assert result.exit_code == 2 and "--password" in result.output


def test_users_disable(runner, client):
    email = _email()
    _create_user(runner, email)
    token = _create_token(runner, email, "read")
    result = runner.invoke(args=["users", "disable", email])
    assert (result.exit_code, result.output) == (0, f"disabled {email}\n")
    assert client.get(WORKFLOWS, headers=_bearer(token)).status_code == 401
    r = client.post("/api/v0/auth/login", json={"email": email, "password": "long-enough-pw"})
    assert r.status_code == 401


def test_users_disable_unknown_fails(runner):
    result = runner.invoke(args=["users", "disable", _email()])
    assert result.exit_code == 1 and "no user" in result.output


# -- tokens ---------------------------------------------------------------------------------------


def test_tokens_create_prints_the_token_alone_on_its_last_line(runner, client):
    email = _email()
    _create_user(runner, email)
    result = runner.invoke(args=["tokens", "create", email, "--scope", "read,publish"])
    assert result.exit_code == 0
    token = _last_line(result.output)
    assert token.startswith("sa_") and " " not in token
    r = client.post(WORKFLOWS, json={"name": "job"}, headers=_bearer(token))
    assert r.status_code == 201


@pytest.mark.parametrize(
    "scope, can_read, can_publish",
    [("read", True, False), ("publish", True, True), ("read,publish", True, True), (" publish , read ", True, True)],
)
def test_tokens_create_scopes(runner, client, scope, can_read, can_publish):
    email = _email()
    _create_user(runner, email)
    token = _create_token(runner, email, scope)
    assert (client.get(WORKFLOWS, headers=_bearer(token)).status_code == 200) == can_read
    assert (client.post(WORKFLOWS, json={"name": "x"}, headers=_bearer(token)).status_code == 201) == can_publish


def test_tokens_create_defaults_to_read(runner, client):
    email = _email()
    _create_user(runner, email)
    result = runner.invoke(args=["tokens", "create", email])
    token = _last_line(result.output)
    assert client.post(WORKFLOWS, json={"name": "x"}, headers=_bearer(token)).status_code == 403


@pytest.mark.parametrize("scope", ["write", "read,admin", "", ","])
def test_tokens_create_bad_scope_is_a_usage_error(runner, scope):
    email = _email()
    _create_user(runner, email)
    result = runner.invoke(args=["tokens", "create", email, "--scope", scope])
    assert result.exit_code == 2 and "scope" in result.output
    assert "sa_" not in result.output


def test_tokens_create_unknown_user_fails(runner):
    result = runner.invoke(args=["tokens", "create", _email()])
    assert result.exit_code == 1 and "no user" in result.output


@pytest.mark.parametrize("by", ["prefix", "token"])
def test_tokens_revoke(runner, client, by):
    email = _email()
    _create_user(runner, email)
    token = _create_token(runner, email)
    other = _create_token(runner, email)
    prefix = token.split("_")[1]
    result = runner.invoke(args=["tokens", "revoke", prefix if by == "prefix" else token])
    assert result.exit_code == 0
    assert client.get(WORKFLOWS, headers=_bearer(token)).status_code == 401
    assert client.get(WORKFLOWS, headers=_bearer(other)).status_code == 200


@pytest.mark.parametrize("prefix", ["000000000000", "nope"])
def test_tokens_revoke_unknown_prefix_fails(runner, prefix):
    result = runner.invoke(args=["tokens", "revoke", prefix])
    assert result.exit_code == 1 and "no live token" in result.output


def test_tokens_revoke_twice_fails(runner):
    email = _email()
    _create_user(runner, email)
    prefix = _create_token(runner, email).split("_")[1]
    assert runner.invoke(args=["tokens", "revoke", prefix]).exit_code == 0
    assert runner.invoke(args=["tokens", "revoke", prefix]).exit_code == 1
