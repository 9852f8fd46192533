"""Login limits per account and per address, counted in PostgreSQL (SPEC §7, issue 6).

Every test logs in from addresses of its own (``REMOTE_ADDR``), so the
per-address count of one test never reaches another's.
"""

from __future__ import annotations

import secrets

import pytest

from streamapp.login_limits import email_key

LOGIN = "/api/v0/auth/login"


def _address() -> str:
    return "10.{}.{}.{}".format(*secrets.token_bytes(3))


@pytest.fixture
def address() -> str:
    return _address()


def _login(client, email: str, password: str, address: str, headers=None):
    return client.post(
        LOGIN,
        json={"email": email, "password": password},
        environ_base={"REMOTE_ADDR": address},
        headers=headers or {},
    )


def _fail(client, email: str, address: str, times: int, headers=None) -> None:
    for _ in range(times):
        r = _login(client, email, "wrong-password", address, headers)
        assert r.status_code == 401, r.get_data(as_text=True)


def _limited(response, window_s: int = 900) -> str:
    assert response.status_code == 429, response.get_data(as_text=True)
    body = response.get_json()
    assert body["error"]["code"] == "too_many_attempts"
    assert 1 <= int(response.headers["Retry-After"]) <= window_s
    return body["error"]["message"]


def _backdate(db, seconds: int, *, email: str | None = None, address: str | None = None) -> None:
    with db.transaction() as cur:
        cur.execute(
            "UPDATE login_failures SET failed_at = failed_at - make_interval(secs => %s)"
            " WHERE email_key = %s OR address = %s",
            (seconds, email_key(email) if email else None, address),
        )


def test_five_failures_lock_the_account_even_for_the_right_password(client, account, address):
    _fail(client, account.email, address, 5)
    assert "account" in _limited(_login(client, account.email, account.password, address))
    # From anywhere: the count is the account's.
    _limited(_login(client, account.email, account.password, _address()))


def test_the_lock_is_one_accounts(client, auth, account, address):
    _fail(client, account.email, address, 5)
    other = auth.user()
    assert _login(client, other.email, other.password, address).status_code == 200


def test_unknown_emails_are_limited_alike(client, account, address):
    unknown = "nobody-" + account.email
    _fail(client, account.email, address, 5)
    _fail(client, unknown, address, 5)
    known = _login(client, account.email, "x" * 10, address)
    missing = _login(client, unknown, "x" * 10, address)
    _limited(known)
    assert (missing.status_code, missing.data) == (429, known.data)


def test_an_email_counts_whatever_its_case_and_spaces(client, account, address):
    for email in (account.email.upper(), f"  {account.email} ", account.email.title(), account.email, account.email):
        _fail(client, email, address, 1)
    _limited(_login(client, account.email, account.password, address))


def test_a_success_clears_the_emails_failures(client, account, address):
    _fail(client, account.email, address, 4)
    assert _login(client, account.email, account.password, address).status_code == 200
    _fail(client, account.email, address, 4)
    assert _login(client, account.email, account.password, address).status_code == 200


def test_twenty_failures_from_one_address_lock_the_address(client, auth, address):
    for _ in range(20):
        _fail(client, f"guess-{secrets.token_hex(4)}@example.com", address, 1)
    account = auth.user()
    assert "address" in _limited(_login(client, account.email, account.password, address))
    assert _login(client, account.email, account.password, _address()).status_code == 200


def test_failures_age_out_of_the_window(client, db, account, address):
    _fail(client, account.email, address, 5)
    _limited(_login(client, account.email, account.password, address))
    _backdate(db, 900, email=account.email)
    assert _login(client, account.email, account.password, address).status_code == 200


def test_retry_after_is_when_the_count_drops_under_the_limit(client, db, account, address):
    _fail(client, account.email, address, 5)
    _backdate(db, 600, email=account.email)
    retry_after = int(_login(client, account.email, account.password, address).headers["Retry-After"])
    assert 295 <= retry_after <= 300
    # It counts down as the failures age.
    _backdate(db, 200, email=account.email)
    assert 95 <= int(_login(client, account.email, account.password, address).headers["Retry-After"]) <= 100


def test_limits_and_window_are_settings(make_client, account, address):
    client = make_client(login_max_failures=2, login_max_address_failures=3, login_window_s=60)
    _fail(client, account.email, address, 2)
    _limited(_login(client, account.email, account.password, address), window_s=60)
    other_address = _address()
    for _ in range(3):
        _fail(client, f"guess-{secrets.token_hex(4)}@example.com", other_address, 1)
    _limited(_login(client, "someone@example.com", "x" * 10, other_address), window_s=60)


def test_the_count_is_shared_by_every_worker(make_client, account, address):
    # Two apps on one database stand for two gunicorn workers: neither keeps counts of its own.
    first, second = make_client(), make_client()
    _fail(first, account.email, address, 3)
    _fail(second, account.email, address, 2)
    _limited(_login(first, account.email, account.password, address))
    _limited(_login(second, account.email, account.password, address))


def test_emails_are_stored_hashed(client, db, address):
    # People type passwords into the email field; it is never kept in the clear.
    typed = f"my-Password-{secrets.token_hex(4)}"
    _fail(client, typed, address, 1)
    with db.transaction() as cur:
        cur.execute("SELECT f::text FROM login_failures f WHERE address = %s", (address,))
        rows = " ".join(row[0] for row in cur.fetchall())
    assert rows and typed not in rows and typed.lower() not in rows


def test_behind_a_proxy_the_forwarded_address_counts(make_client, auth):
    client = make_client(proxy_hops=1)
    proxy, attacker = _address(), _address()
    for _ in range(20):
        _fail(client, f"guess-{secrets.token_hex(4)}@example.com", proxy, 1, {"X-Forwarded-For": attacker})
    account = auth.user()
    limited = _login(client, account.email, account.password, proxy, {"X-Forwarded-For": attacker})
    assert "address" in _limited(limited)
    # Everyone else behind the same proxy logs in.
    ok = _login(client, account.email, account.password, proxy, {"X-Forwarded-For": f"203.0.113.9, {_address()}"})
    assert ok.status_code == 200


def test_without_proxy_hops_a_forwarded_header_is_ignored(client, auth, address):
    for n in range(20):
        _fail(client, f"guess-{secrets.token_hex(4)}@example.com", address, 1, {"X-Forwarded-For": f"192.0.2.{n}"})
    account = auth.user()
    _limited(_login(client, account.email, account.password, address, {"X-Forwarded-For": _address()}))
