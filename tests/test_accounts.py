"""Users and API tokens (SPEC §7) through the accounts module's own functions, on a real PostgreSQL.

The HTTP side (login, bearer tokens, the token endpoints) is in tests/test_auth.py; here each
function's outcome is read back from the database it wrote to.
"""

from __future__ import annotations

import secrets

import pytest

from streamapp import accounts
from streamapp.errors import Conflict
from streamapp.errors import Invalid
from streamapp.errors import NotFound


def _email() -> str:
    return f"acc{secrets.token_hex(6)}@example.com"


@pytest.fixture
def user(db):
    with db.transaction() as cur:
        return accounts.create_user(cur, _email(), "correct horse")


def test_a_created_user_logs_in_with_its_password_whatever_the_emails_case(db, user):
    with db.transaction() as cur:
        assert accounts.check_password(cur, user.email.upper(), "correct horse") == user
        assert accounts.check_password(cur, user.email, "wrong horse") is None
        assert accounts.check_password(cur, _email(), "correct horse") is None
        assert accounts.get_user(cur, user.id) == user
        assert accounts.find_user(cur, f"  {user.email.upper()} ") == user
    assert not user.is_admin and user.is_active and user.get_id() == str(user.id)


@pytest.mark.parametrize(("email", "password"), [("no-at-sign", "long enough"), ("a@example.com", "short")])
def test_a_bad_email_or_short_password_is_invalid(db, email, password):
    with db.transaction() as cur, pytest.raises(Invalid):
        accounts.create_user(cur, email, password)


def test_a_taken_email_in_another_case_is_a_conflict_and_adds_no_user(db, user):
    with db.transaction() as cur, pytest.raises(Conflict):
        accounts.create_user(cur, user.email.upper(), "another password")
    with db.transaction() as cur:
        cur.execute("SELECT count(*) FROM users WHERE lower(email) = lower(%s)", (user.email,))
        assert cur.fetchone() == (1,)
        assert accounts.check_password(cur, user.email, "correct horse") == user  # the first one stays


def test_a_token_authenticates_its_user_with_its_scopes(db, user):
    with db.transaction() as cur:
        token, info = accounts.new_token(cur, user.id, ["publish"])
    assert token.startswith(accounts.TOKEN_MARK) and accounts.token_prefix(token) == info.prefix
    assert accounts.is_prefix(info.prefix) and not accounts.is_prefix(token)
    assert info.scopes == ("publish", "read") and info.revoked_at is None
    with db.transaction() as cur:
        found = accounts.authenticate_token(cur, token)
    assert found is not None
    assert (found.id, found.scopes, found.token_prefix) == (user.id, frozenset({"read", "publish"}), info.prefix)


def test_a_token_with_a_real_prefix_and_a_forged_secret_is_refused(db, user):
    with db.transaction() as cur:
        token = accounts.create_token(cur, user.id, ["read"])
        forged = token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB")
        assert accounts.authenticate_token(cur, forged) is None
        assert accounts.authenticate_token(cur, "not-a-token") is None
        assert accounts.authenticate_token(cur, token) is not None


def test_tokens_are_listed_newest_first_without_their_secret(db, user):
    with db.transaction() as cur:
        first = accounts.create_token(cur, user.id, ["read"])
    with db.transaction() as cur:
        second = accounts.create_token(cur, user.id, ["publish"])
    with db.transaction() as cur:
        listed = accounts.list_tokens(cur, user.id)
    assert [i.prefix for i in listed] == [accounts.token_prefix(second), accounts.token_prefix(first)]
    assert all(first not in repr(i) and second not in repr(i) for i in listed)


def test_a_revoked_token_stops_working_and_is_reported_revoked(db, user):
    with db.transaction() as cur:
        token = accounts.create_token(cur, user.id, ["read"])
    prefix = accounts.token_prefix(token)
    assert prefix is not None
    with db.transaction() as cur:
        accounts.revoke_token(cur, prefix)
    with db.transaction() as cur:
        assert accounts.authenticate_token(cur, token) is None
        assert accounts.revoked(cur, [str(user.id)], [prefix]) == (set(), {prefix})
        assert accounts.list_tokens(cur, user.id)[0].revoked_at is not None
    with db.transaction() as cur, pytest.raises(NotFound):
        accounts.revoke_token(cur, prefix)  # it is no longer live


def test_only_the_owner_given_may_revoke_a_token(db, user):
    with db.transaction() as cur:
        token = accounts.create_token(cur, user.id, ["read"])
        other = accounts.create_user(cur, _email(), "another password")
    with db.transaction() as cur, pytest.raises(NotFound):
        accounts.revoke_token(cur, token, user_id=other.id)
    with db.transaction() as cur:
        assert accounts.authenticate_token(cur, token) is not None


def test_a_disabled_user_can_neither_log_in_nor_use_a_token(db, user):
    with db.transaction() as cur:
        token = accounts.create_token(cur, user.id, ["read"])
        accounts.disable_user(cur, user.email.upper())
    with db.transaction() as cur:
        assert accounts.check_password(cur, user.email, "correct horse") is None
        assert accounts.authenticate_token(cur, token) is None
        assert accounts.revoked(cur, [str(user.id), "not-an-id"], []) == ({str(user.id)}, set())
        assert accounts.get_user(cur, user.id).is_active is False


def test_disabling_an_unknown_user_is_not_found(db):
    with db.transaction() as cur, pytest.raises(NotFound):
        accounts.disable_user(cur, _email())


@pytest.mark.parametrize(
    ("scopes", "expected"),
    [(["read"], {"read"}), (["publish"], {"read", "publish"}), ([" read ", "publish"], {"read", "publish"})],
)
def test_publish_implies_read(scopes, expected):
    assert accounts.expand_scopes(scopes) == frozenset(expected)


@pytest.mark.parametrize("scopes", [[], [" "], ["admin"], ["read", "write"]])
def test_an_empty_or_unknown_scope_list_is_invalid(scopes):
    with pytest.raises(Invalid):
        accounts.expand_scopes(scopes)
