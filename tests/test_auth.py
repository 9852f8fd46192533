"""Sessions, bearer tokens, scopes and visibility (SPEC §7)."""

from __future__ import annotations

import hashlib

import pytest

from streamapp import accounts

LOGIN = "/api/v0/auth/login"
LOGOUT = "/api/v0/auth/logout"
WORKFLOWS = "/api/v0/executions/workflows"
WARNING = {"type": "warning", "data": {"code": "c", "message": "m"}}


def _error(response, status: int, code: str) -> str:
    assert response.status_code == status, response.get_data(as_text=True)
    body = response.get_json()
    assert body == {"error": {"code": code, "message": body["error"]["message"]}}
    return body["error"]["message"]


def _login(client, account, **kw):
    return client.post(LOGIN, json={"email": account.email, "password": account.password}, **kw)


def _create(client, account) -> str:
    r = client.post(WORKFLOWS, json={"name": "job"}, headers=account.headers)
    assert r.status_code == 201
    return r.get_json()["exec_id"]


def _disable(db, account) -> None:
    with db.transaction() as cur:
        accounts.disable_user(cur, account.email)


# -- sessions -------------------------------------------------------------------------------------


def test_login_answers_the_user(client, account):
    r = _login(client, account)
    assert r.status_code == 200
    assert r.get_json() == {"id": account.user.get_id(), "email": account.email, "is_admin": False}


def test_session_cookie_authenticates(client, account):
    exec_id = _create(client, account)
    _login(client, account)
    assert client.get(f"{WORKFLOWS}/{exec_id}").status_code == 200


def test_a_new_secret_key_ends_every_session_and_a_fallback_keeps_them(app, account):
    # The standalone app keeps its cookie signer between requests (sessions.py): a rotated key must
    # still be seen at once, as Flask sees it, with SECRET_KEY_FALLBACKS honoured.
    exec_id = _create(app.test_client(), account)
    client = app.test_client()
    _login(client, account)
    old_key = app.secret_key
    assert client.get(f"{WORKFLOWS}/{exec_id}").status_code == 200
    app.secret_key = old_key + "-rotated"
    assert client.get(f"{WORKFLOWS}/{exec_id}").status_code == 401
    app.config["SECRET_KEY_FALLBACKS"] = [old_key]
    assert client.get(f"{WORKFLOWS}/{exec_id}").status_code == 200


def _session_headers(client, account, exec_id: str) -> list[tuple[str, str | None, str | None]]:
    """What each step of a session's life answers in ``Vary`` and ``Set-Cookie``."""
    steps = [
        lambda: client.get(f"{WORKFLOWS}/{exec_id}", headers=account.headers),  # bearer, no cookie
        lambda: client.get("/healthz"),
        lambda: _login(client, account),
        lambda: client.get(f"{WORKFLOWS}/{exec_id}"),  # the session cookie
        lambda: client.post(LOGOUT, json={}),
        lambda: client.get(f"{WORKFLOWS}/{exec_id}"),
    ]
    seen = []
    for step in steps:
        r = step()
        cookie = r.headers.get("Set-Cookie")
        # The signed value differs by its timestamp; whether a cookie is set, and its attributes, must not.
        seen.append((f"{r.status_code}", r.headers.get("Vary"), cookie and cookie.split(";", 1)[1]))
    return seen


def test_the_standalone_sessions_answer_as_flasks_own(settings, account):
    # sessions.py takes a shorter way for requests without a cookie: same headers, same cookies.
    from flask.sessions import SecureCookieSessionInterface

    from streamapp import create_app

    ours = create_app(settings)
    flasks = create_app(settings)
    flasks.session_interface = SecureCookieSessionInterface()
    exec_id = _create(ours.test_client(), account)
    expected = _session_headers(flasks.test_client(), account, exec_id)
    assert [status for status, _, _ in expected] == ["200", "200", "200", "200", "204", "401"]
    assert _session_headers(ours.test_client(), account, exec_id) == expected


def test_a_session_user_comes_before_a_bearer_token_as_flask_login_orders_them(app, auth, account):
    # Bearer requests are signed in ahead of Flask-Login (auth._bearer_user) only without a session:
    # with both, the session's user is the request's user, as before.
    other = auth.user()
    exec_id = _create(app.test_client(), account)
    client = app.test_client()
    _login(client, account)
    assert client.get(f"{WORKFLOWS}/{exec_id}", headers=other.headers).status_code == 200
    assert app.test_client().get(f"{WORKFLOWS}/{exec_id}", headers=other.headers).status_code == 404


def test_a_bad_bearer_token_is_looked_up_once_and_refused(client, monkeypatch):
    looked_up: list[str] = []
    real = accounts.authenticate_token

    def counting(cur, token):
        looked_up.append(token)
        return real(cur, token)

    monkeypatch.setattr(accounts, "authenticate_token", counting)
    r = client.get(WORKFLOWS, headers={"Authorization": "Bearer sa_000000000000_not-a-real-token"})
    _error(r, 401, "not_authenticated")
    assert len(looked_up) == 1


def test_login_email_is_case_insensitive(client, account):
    r = client.post(LOGIN, json={"email": account.email.upper(), "password": account.password})
    assert r.status_code == 200


def test_logout_ends_the_session(client, account):
    _login(client, account)
    assert client.get(WORKFLOWS).status_code == 200
    r = client.post(LOGOUT, json={})
    assert (r.status_code, r.data) == (204, b"")
    _error(client.get(WORKFLOWS), 401, "not_authenticated")


@pytest.mark.parametrize(
    "data, content_type",
    [("email=a%40b.c&password=x", "application/x-www-form-urlencoded"), ('{"email": "a@b.c"}', "text/plain")],
)
def test_login_must_be_json(client, data, content_type):
    r = client.post(LOGIN, data=data, content_type=content_type)
    assert "application/json" in _error(r, 403, "forbidden")


@pytest.mark.parametrize(
    "body", [{}, {"email": "a@b.c"}, {"password": "x"}, {"email": 1, "password": "x"}, ["a@b.c", "x"], "a@b.c"]
)
def test_login_body_needs_email_and_password(client, body):
    _error(client.post(LOGIN, json=body), 400, "bad_request")


def test_wrong_password_and_unknown_email_look_the_same(client, account):
    wrong = client.post(LOGIN, json={"email": account.email, "password": account.password + "x"})
    unknown = client.post(LOGIN, json={"email": "nobody-" + account.email, "password": account.password})
    _error(wrong, 401, "not_authenticated")
    assert wrong.data == unknown.data and unknown.status_code == 401


def test_disabled_user_cannot_log_in(client, account, db):
    _disable(db, account)
    _error(_login(client, account), 401, "not_authenticated")


def test_disabled_users_session_stops_working(client, account, db):
    _login(client, account)
    _disable(db, account)
    _error(client.get(WORKFLOWS), 401, "not_authenticated")


def _set_cookie(response) -> str:
    cookies = [c for c in response.headers.getlist("Set-Cookie") if c.startswith("session=")]
    assert len(cookies) == 1
    return cookies[0]


def test_session_cookie_flags_in_development(client, account):
    cookie = _set_cookie(_login(client, account))
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie
    assert "Secure" not in cookie


def test_session_cookie_is_secure_outside_development(make_client, account):
    cookie = _set_cookie(_login(make_client(env="production"), account))
    assert "Secure" in cookie and "HttpOnly" in cookie and "SameSite=Lax" in cookie


def _remember_cookie(client, account) -> str:
    """The remember-me cookie Flask-Login sets when a login asks for one."""
    from flask_login import login_user

    def remember() -> str:
        login_user(account.user, remember=True)
        return ""

    client.application.add_url_rule("/remember-me", view_func=remember)
    cookies = [c for c in client.get("/remember-me").headers.getlist("Set-Cookie") if c.startswith("remember_token=")]
    assert len(cookies) == 1
    return cookies[0]


@pytest.mark.parametrize(("env", "secure"), [("development", False), ("production", True)])
def test_remember_cookie_has_the_session_cookies_flags(make_client, account, env, secure):
    cookie = _remember_cookie(make_client(env=env), account)
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie
    assert ("Secure" in cookie) is secure


# -- cross-site requests --------------------------------------------------------------------------


@pytest.mark.parametrize("origin", ["https://evil.example", "http://localhost.evil.example", "null"])
def test_login_from_another_origin_is_403(client, account, origin):
    _error(_login(client, account, headers={"Origin": origin}), 403, "forbidden")


def test_login_from_own_origin(client, account):
    assert _login(client, account, headers={"Origin": "http://localhost"}).status_code == 200


def test_login_from_allow_listed_origin(make_client, account):
    client = make_client(cors_origins=("https://app.example.com",))
    assert _login(client, account, headers={"Origin": "https://app.example.com"}).status_code == 200


def test_cookie_request_from_another_origin_is_403(client, account):
    _login(client, account)
    r = client.post(WORKFLOWS, json={"name": "x"}, headers={"Origin": "https://evil.example"})
    _error(r, 403, "forbidden")
    assert client.get(WORKFLOWS).get_json()["items"] == []


def test_cookie_request_from_own_origin(client, account):
    _login(client, account)
    assert client.post(WORKFLOWS, json={"name": "x"}, headers={"Origin": "http://localhost"}).status_code == 201


def test_bearer_request_from_any_origin(client, account):
    r = client.post(WORKFLOWS, json={"name": "x"}, headers={**account.headers, "Origin": "https://elsewhere.example"})
    assert r.status_code == 201


def test_cross_site_logout_is_refused(client, account):
    _login(client, account)
    _error(client.post(LOGOUT, headers={"Origin": "https://evil.example"}, json={}), 403, "forbidden")
    _error(client.post(LOGOUT, data="x", content_type="text/plain"), 403, "forbidden")
    assert client.get(WORKFLOWS).status_code == 200


# -- bearer tokens --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "method, path",
    [
        ("get", WORKFLOWS),
        ("get", f"{WORKFLOWS}/x"),
        ("post", WORKFLOWS),
        ("post", f"{WORKFLOWS}/x/events"),
        ("get", "/api/v0/events/catalog"),
    ],
)
def test_no_credentials_is_401(client, method, path):
    _error(getattr(client, method)(path, json={}), 401, "not_authenticated")


def _tampered(token: str) -> str:
    return token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB")


@pytest.mark.parametrize(
    "header",
    [
        lambda t: "Bearer nonsense",
        lambda t: "Bearer sa_",
        lambda t: "Bearer sa_000000000000_x",
        lambda t: "Bearer " + _tampered(t),
        lambda t: "Bearer " + t[:-1],
        lambda t: "Bearer",
        lambda t: "Basic " + t,
        lambda t: t,
    ],
)
def test_bad_token_is_401(client, account, header):
    r = client.get(WORKFLOWS, headers={"Authorization": header(account.token)})
    _error(r, 401, "not_authenticated")


def test_scheme_is_case_insensitive(client, account):
    assert client.get(WORKFLOWS, headers={"Authorization": f"bearer {account.token}"}).status_code == 200


def test_revoked_token_is_401(client, auth, account, db):
    token = auth.token(account, ["read"])
    assert client.get(WORKFLOWS, headers=auth.bearer(token)).status_code == 200
    with db.transaction() as cur:
        accounts.revoke_token(cur, token)
    _error(client.get(WORKFLOWS, headers=auth.bearer(token)), 401, "not_authenticated")
    assert client.get(WORKFLOWS, headers=account.headers).status_code == 200


def test_read_token_reads(client, auth, account):
    exec_id = _create(client, account)
    assert client.get(f"{WORKFLOWS}/{exec_id}", headers=auth.bearer(auth.token(account, ["read"]))).status_code == 200


def test_read_token_appending_is_403(client, auth, account):
    exec_id = _create(client, account)
    r = client.post(
        f"{WORKFLOWS}/{exec_id}/events", json={"events": [WARNING]}, headers=auth.bearer(auth.token(account, ["read"]))
    )
    assert "publish" in _error(r, 403, "forbidden")


@pytest.mark.parametrize("scopes", [["publish"], ["read", "publish"]])
def test_publish_token_appends(client, auth, account, scopes):
    exec_id = _create(client, account)
    r = client.post(
        f"{WORKFLOWS}/{exec_id}/events", json={"events": [WARNING]}, headers=auth.bearer(auth.token(account, scopes))
    )
    assert r.status_code == 201


def test_publish_implies_read(client, auth, account):
    assert client.get(WORKFLOWS, headers=auth.bearer(auth.token(account, ["publish"]))).status_code == 200


def test_disabled_users_token_stops_working(client, account, db):
    assert client.get(WORKFLOWS, headers=account.headers).status_code == 200
    _disable(db, account)
    _error(client.get(WORKFLOWS, headers=account.headers), 401, "not_authenticated")


# -- visibility -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "method, suffix, body",
    [("get", "", None), ("post", "/events", {"events": [WARNING]})],
)
def test_other_users_execution_looks_missing(client, auth, account, method, suffix, body):
    exec_id = _create(client, account)
    other = auth.user()
    theirs = getattr(client, method)(f"{WORKFLOWS}/{exec_id}{suffix}", json=body, headers=other.headers)
    missing = getattr(client, method)(f"{WORKFLOWS}/no-such-id{suffix}", json=body, headers=other.headers)
    _error(theirs, 404, "not_found")
    assert theirs.data == missing.data and missing.status_code == 404


def test_other_users_read_token_sees_404_not_403(client, auth, account):
    exec_id = _create(client, account)
    other = auth.user()
    r = client.post(
        f"{WORKFLOWS}/{exec_id}/events", json={"events": [WARNING]}, headers=auth.bearer(auth.token(other, ["read"]))
    )
    _error(r, 404, "not_found")


def test_admin_reads_everyones(client, auth, account):
    exec_id = _create(client, account)
    admin = auth.user(admin=True)
    r = client.get(f"{WORKFLOWS}/{exec_id}", headers=admin.headers)
    assert r.status_code == 200 and r.get_json()["owner"] == account.user.get_id()


def test_admin_session_reads_everyones(client, auth, account):
    exec_id = _create(client, account)
    _login(client, auth.user(admin=True))
    assert client.get(f"{WORKFLOWS}/{exec_id}").status_code == 200


# -- storage of tokens ----------------------------------------------------------------------------


def _token_rows(db, account) -> list[tuple]:
    with db.transaction() as cur:
        cur.execute(
            "SELECT prefix, token_hash, scopes::text, last_used_at FROM api_tokens WHERE user_id = %s ORDER BY id",
            (account.user.id,),
        )
        return cur.fetchall()


def test_tokens_are_stored_hashed(db, auth, account):
    token = auth.token(account, ["read"])
    secret = token.split("_", 2)[2]
    prefix, token_hash, scopes, _ = _token_rows(db, account)[-1]
    assert bytes(token_hash) == hashlib.sha256(token.encode()).digest()
    assert token.startswith(f"sa_{prefix}_") and scopes == "{read}"
    with db.transaction() as cur:
        cur.execute("SELECT t::text FROM api_tokens t WHERE user_id = %s", (account.user.id,))
        text = " ".join(row[0] for row in cur.fetchall())
    assert token not in text and secret not in text


def test_last_used_at_is_set_on_use(client, db, auth, account):
    token = auth.token(account, ["read"])
    assert _token_rows(db, account)[-1][3] is None
    assert client.get(WORKFLOWS, headers=auth.bearer(token)).status_code == 200
    assert _token_rows(db, account)[-1][3] is not None


# -- the tokens endpoints (issue 6) ---------------------------------------------------------------

TOKENS = "/api/v0/auth/tokens"
TOKEN_FIELDS = {"prefix", "scopes", "created_at", "last_used_at", "revoked_at"}


def _new_token(client, scopes=("read",)):
    r = client.post(TOKENS, json={"scopes": list(scopes)})
    assert r.status_code == 201, r.get_data(as_text=True)
    return r


def _delete(client, prefix: str, headers=None):
    return client.delete(f"{TOKENS}/{prefix}", headers=headers or {}, content_type="application/json")


@pytest.mark.parametrize(
    "scopes, expected",
    [(["read"], ["read"]), (["publish"], ["publish", "read"]), (["read", "publish"], ["publish", "read"])],
)
def test_a_session_creates_a_token_shown_once(client, account, scopes, expected):
    _login(client, account)
    r = _new_token(client, scopes)
    body = r.get_json()
    assert set(body) == {"token", "prefix", "scopes", "created_at"}
    assert body["token"].startswith(f"sa_{body['prefix']}_")
    assert body["scopes"] == expected
    assert r.headers["Cache-Control"] == "no-store"
    listed = client.get(TOKENS).get_json()["items"]
    assert body["token"] not in str(listed) and body["token"].split("_", 2)[2] not in str(listed)


def test_a_created_token_works_with_its_scopes(client, account):
    _login(client, account)
    token = _new_token(client, ["read"]).get_json()["token"]
    fresh = client.application.test_client()
    exec_id = _create(fresh, account)
    assert fresh.get(f"{WORKFLOWS}/{exec_id}", headers={"Authorization": f"Bearer {token}"}).status_code == 200
    r = fresh.post(
        f"{WORKFLOWS}/{exec_id}/events", json={"events": [WARNING]}, headers={"Authorization": f"Bearer {token}"}
    )
    _error(r, 403, "forbidden")


@pytest.mark.parametrize("scopes", [["read"], ["read", "publish"]])
def test_a_token_cannot_create_tokens(client, auth, account, scopes):
    r = client.post(TOKENS, json={"scopes": ["read"]}, headers=auth.bearer(auth.token(account, scopes)))
    assert "session" in _error(r, 403, "forbidden")


def test_creating_a_token_needs_a_login(client):
    _error(client.post(TOKENS, json={"scopes": ["read"]}), 401, "not_authenticated")


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"scopes": []},
        {"scopes": ["admin"]},
        {"scopes": "read"},
        {"scopes": [1]},
        {"scopes": [""]},
        {"scopes": ["read"], "name": "x"},
    ],
)
def test_token_scopes_must_be_known(client, account, body):
    _login(client, account)
    _error(client.post(TOKENS, json=body), 422, "invalid")


def test_creating_a_token_from_another_origin_or_as_a_form_is_403(client, account):
    _login(client, account)
    _error(client.post(TOKENS, json={"scopes": ["read"]}, headers={"Origin": "https://evil.example"}), 403, "forbidden")
    _error(client.post(TOKENS, data="scopes=read", content_type="application/x-www-form-urlencoded"), 403, "forbidden")
    assert client.get(TOKENS).get_json()["items"][1:] == []  # the fixture's own token only


def test_listing_shows_the_callers_tokens_never_a_secret(client, db, auth, account):
    other = auth.user()
    read = auth.token(account, ["read"])
    auth.token(other, ["read"])
    r = client.get(TOKENS, headers=auth.bearer(read))
    assert r.status_code == 200
    items = r.get_json()["items"]
    assert [i["prefix"] for i in items] == [accounts.token_prefix(read), accounts.token_prefix(account.token)]
    assert all(set(i) == TOKEN_FIELDS for i in items)
    assert items[0]["scopes"] == ["read"] and items[1]["scopes"] == ["publish", "read"]
    assert items[0]["last_used_at"] is not None and items[0]["revoked_at"] is None
    text = r.get_data(as_text=True)
    stored = {bytes(row[1]).hex() for row in _token_rows(db, account)}
    assert read not in text and account.token not in text and not any(h in text for h in stored)


def test_listing_shows_revoked_tokens_with_their_time(client, auth, account):
    token = auth.token(account, ["read"])
    assert _delete(client, accounts.token_prefix(token), account.headers).status_code == 204
    items = {i["prefix"]: i for i in client.get(TOKENS, headers=account.headers).get_json()["items"]}
    assert items[accounts.token_prefix(token)]["revoked_at"] is not None
    assert items[accounts.token_prefix(account.token)]["revoked_at"] is None


def test_listing_needs_a_credential(client):
    _error(client.get(TOKENS), 401, "not_authenticated")


def test_a_user_revokes_their_own_token_with_a_session(client, auth, account):
    token = auth.token(account, ["read"])
    _login(client, account)
    r = _delete(client, accounts.token_prefix(token))
    assert (r.status_code, r.data) == (204, b"")
    cookieless = client.application.test_client()
    _error(cookieless.get(WORKFLOWS, headers=auth.bearer(token)), 401, "not_authenticated")
    # Gone is gone: a second revoke finds no live token.
    _error(_delete(client, accounts.token_prefix(token)), 404, "not_found")


def test_a_publish_token_revokes_itself(client, account):
    assert _delete(client, accounts.token_prefix(account.token), account.headers).status_code == 204
    _error(client.get(WORKFLOWS, headers=account.headers), 401, "not_authenticated")


def test_a_read_token_cannot_revoke(client, auth, account):
    read = auth.token(account, ["read"])
    _error(_delete(client, accounts.token_prefix(account.token), auth.bearer(read)), 403, "forbidden")
    assert client.get(WORKFLOWS, headers=account.headers).status_code == 200


def test_someone_elses_token_looks_missing(client, auth, account):
    other = auth.user()
    theirs = _delete(client, accounts.token_prefix(other.token), account.headers)
    missing = _delete(client, "0123456789ab", account.headers)
    _error(theirs, 404, "not_found")
    assert theirs.data == missing.data and missing.status_code == 404
    assert client.get(WORKFLOWS, headers=other.headers).status_code == 200


def test_an_admin_revokes_anyones_token(client, auth, account):
    admin = auth.user(admin=True)
    assert _delete(client, accounts.token_prefix(account.token), admin.headers).status_code == 204
    _error(client.get(WORKFLOWS, headers=account.headers), 401, "not_authenticated")


def test_a_whole_token_in_the_url_is_refused_and_not_revoked(client, account):
    r = _delete(client, account.token, account.headers)
    message = _error(r, 400, "bad_request")
    assert account.token not in message
    assert client.get(WORKFLOWS, headers=account.headers).status_code == 200


@pytest.mark.parametrize("prefix", ["x", "0123456789AB", "0123456789abc", "sa_"])
def test_a_malformed_prefix_is_404(client, account, prefix):
    _error(_delete(client, prefix, account.headers), 404, "not_found")


def test_revoking_with_a_session_follows_the_cross_site_rule(client, auth, account):
    token = auth.token(account, ["read"])
    _login(client, account)
    prefix = accounts.token_prefix(token)
    _error(client.delete(f"{TOKENS}/{prefix}"), 403, "forbidden")  # not JSON: a form could have sent it
    _error(_delete(client, prefix, {"Origin": "https://evil.example"}), 403, "forbidden")
    assert client.application.test_client().get(WORKFLOWS, headers=auth.bearer(token)).status_code == 200
    assert _delete(client, prefix, {"Origin": "http://localhost"}).status_code == 204
