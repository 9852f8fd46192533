"""CORS under the API prefix and the cross-site origin rule (SPEC §7)."""

from __future__ import annotations

import pytest
from flask import Flask

from streamapp.cors import allowed_origins
from streamapp.cors import init_cors
from streamapp.cors import is_allowed
from streamapp.cors import normalize_origin
from streamapp.cors import same_or_allowed_origin
from streamapp.cors import under_prefix
from streamapp.errors import TooManyStreams

ALLOWED = "https://app.example.com"
OTHER = "https://evil.example.net"
CORS_HEADERS = (
    "Access-Control-Allow-Origin",
    "Access-Control-Allow-Credentials",
    "Access-Control-Expose-Headers",
    "Access-Control-Allow-Methods",
    "Access-Control-Allow-Headers",
    "Access-Control-Max-Age",
)


@pytest.fixture
def client():
    app = Flask(__name__)

    @app.get("/api/v0/things")
    def things():
        return {"items": []}

    @app.post("/api/v0/things")
    def create_thing():
        return {"id": 1}, 201

    @app.get("/api/v0/busy")
    def busy():
        exc = TooManyStreams(retry_after=3)
        return {"error": exc.code}, exc.status, exc.headers()

    @app.get("/elsewhere")
    def elsewhere():
        return "plain"

    init_cors(app, (ALLOWED, "http://localhost:5173"), "/api/v0")
    return app.test_client()


def _preflight(client, path: str, origin: str):
    return client.options(
        path,
        headers={
            "Origin": origin,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "Authorization, Content-Type",
        },
    )


def _no_cors_headers(response) -> bool:
    return not any(name in response.headers for name in CORS_HEADERS)


@pytest.mark.parametrize("origin", [ALLOWED, "http://localhost:5173"])
def test_allowed_origin_gets_the_headers_with_credentials(client, origin):
    r = client.get("/api/v0/things", headers={"Origin": origin})
    assert r.status_code == 200
    assert r.headers["Access-Control-Allow-Origin"] == origin
    assert r.headers["Access-Control-Allow-Credentials"] == "true"
    assert r.headers["Access-Control-Expose-Headers"] == "Retry-After"
    assert r.headers["Vary"] == "Origin"
    assert "Access-Control-Allow-Methods" not in r.headers


def test_allowed_origin_on_a_post_and_on_an_error_with_retry_after(client):
    r = client.post("/api/v0/things", headers={"Origin": ALLOWED})
    assert r.status_code == 201
    assert r.headers["Access-Control-Allow-Origin"] == ALLOWED
    r = client.get("/api/v0/busy", headers={"Origin": ALLOWED})
    assert r.status_code == 429
    assert r.headers["Retry-After"] == "3"
    assert r.headers["Access-Control-Allow-Origin"] == ALLOWED
    assert r.headers["Access-Control-Expose-Headers"] == "Retry-After"


def test_allowed_origin_is_echoed_as_sent(client):
    r = client.get("/api/v0/things", headers={"Origin": "https://APP.example.com:443"})
    assert r.headers["Access-Control-Allow-Origin"] == "https://APP.example.com:443"


@pytest.mark.parametrize(
    "origin",
    [OTHER, "null", "https://app.example.com.evil.net", "http://app.example.com", "https://app.example.com:8443"],
)
def test_refused_origin_gets_no_cors_headers(client, origin):
    r = client.get("/api/v0/things", headers={"Origin": origin})
    assert r.status_code == 200
    assert r.get_json() == {"items": []}
    assert _no_cors_headers(r)
    assert r.headers["Vary"] == "Origin"


def test_no_origin_gets_no_cors_headers(client):
    r = client.get("/api/v0/things")
    assert r.status_code == 200
    assert _no_cors_headers(r)


def test_preflight_from_an_allowed_origin(client):
    r = _preflight(client, "/api/v0/things", ALLOWED)
    assert r.status_code == 204
    assert r.data == b""
    assert r.headers["Access-Control-Allow-Origin"] == ALLOWED
    assert r.headers["Access-Control-Allow-Credentials"] == "true"
    assert r.headers["Access-Control-Allow-Methods"] == "GET, POST, DELETE, OPTIONS"
    assert r.headers["Access-Control-Allow-Headers"] == "Authorization, Content-Type, Last-Event-ID"
    assert r.headers["Access-Control-Max-Age"] == "600"
    assert r.headers["Vary"] == "Origin"


def test_preflight_to_any_path_under_the_prefix(client):
    r = _preflight(client, "/api/v0/executions/workflows/abc/stream", ALLOWED)
    assert r.status_code == 204
    assert r.headers["Access-Control-Allow-Origin"] == ALLOWED


@pytest.mark.parametrize("origin", [OTHER, "null"])
def test_preflight_from_a_refused_origin(client, origin):
    r = _preflight(client, "/api/v0/things", origin)
    assert r.status_code == 403
    assert r.get_json() == {
        "error": {"code": "forbidden", "message": "Cross-origin requests from this origin are not allowed."}
    }
    assert _no_cors_headers(r)


def test_options_that_is_not_a_preflight_is_flasks(client):
    r = client.options("/api/v0/things")
    assert r.status_code == 200
    assert "POST" in r.headers["Allow"]
    assert _no_cors_headers(r)


@pytest.mark.parametrize("path", ["/elsewhere", "/api/v0x", "/api"])
def test_paths_outside_the_prefix_are_untouched(client, path):
    r = client.get(path, headers={"Origin": ALLOWED})
    assert _no_cors_headers(r)
    assert "Vary" not in r.headers
    r = _preflight(client, path, OTHER)
    assert r.status_code != 403
    assert _no_cors_headers(r)


def test_an_empty_allow_list_refuses_every_preflight():
    app = Flask(__name__)

    @app.get("/api/v0/things")
    def things():
        return {"items": []}

    init_cors(app, (), "/api/v0")
    client = app.test_client()
    assert _preflight(client, "/api/v0/things", ALLOWED).status_code == 403
    r = client.get("/api/v0/things", headers={"Origin": ALLOWED})
    assert _no_cors_headers(r)
    assert "Vary" not in r.headers


@pytest.mark.parametrize(
    ("origin", "expected"),
    [
        ("https://app.example.com", "https://app.example.com"),
        ("HTTPS://App.Example.COM/", "https://app.example.com"),
        ("https://app.example.com:443", "https://app.example.com"),
        ("http://app.example.com:80", "http://app.example.com"),
        ("http://app.example.com:443", "http://app.example.com:443"),
        ("https://app.example.com:8443", "https://app.example.com:8443"),
        ("https://app.example.com:x", "https://app.example.com:x"),
        ("null", "null"),
    ],
)
def test_normalize_origin(origin, expected):
    assert normalize_origin(origin) == expected


def test_is_allowed():
    allowed = allowed_origins(["https://App.example.com/", "", "http://localhost:5173"])
    assert allowed == frozenset({"https://app.example.com", "http://localhost:5173"})
    assert is_allowed("https://app.example.com:443", allowed)
    assert is_allowed("http://localhost:5173", allowed)
    assert not is_allowed("http://localhost:5174", allowed)
    assert not is_allowed(None, allowed)
    assert not is_allowed("", allowed)
    assert not is_allowed("null", allowed_origins(["null"]))


@pytest.mark.parametrize(
    ("path", "prefix", "expected"),
    [
        ("/api/v0", "/api/v0", True),
        ("/api/v0/", "/api/v0", True),
        ("/api/v0/executions", "/api/v0", True),
        ("/api/v0/executions", "/api/v0/", True),
        ("/api/v0x", "/api/v0", False),
        ("/api", "/api/v0", False),
        ("/healthz", "/api/v0", False),
        ("/anything", "", True),
        ("/anything", "/", True),
    ],
)
def test_under_prefix(path, prefix, expected):
    assert under_prefix(path, prefix) is expected


HOST = "https://streams.example.com/"
LISTED = ("https://app.example.com",)


@pytest.mark.parametrize(
    ("origin", "host_url", "expected"),
    [
        (None, HOST, True),
        ("https://streams.example.com", HOST, True),
        ("https://STREAMS.example.com:443", HOST, True),
        ("https://app.example.com", HOST, True),
        ("http://localhost:5000", "http://localhost:5000/", True),
        ("http://localhost:5001", "http://localhost:5000/", False),
        ("http://streams.example.com", HOST, False),
        ("https://evil.example.net", HOST, False),
        ("https://streams.example.com.evil.net", HOST, False),
        ("null", HOST, False),
        ("NULL", HOST, False),
        ("", HOST, False),
    ],
)
def test_same_or_allowed_origin(origin, host_url, expected):
    assert same_or_allowed_origin(origin, host_url, LISTED) is expected


def test_same_or_allowed_origin_with_an_empty_list():
    assert same_or_allowed_origin("https://streams.example.com", HOST, ())
    assert not same_or_allowed_origin("https://app.example.com", HOST, ())


# -- the real app (wired by StreamApp.init_app, issue 6) ------------------------------------------


@pytest.fixture
def app_client(settings):
    from streamapp import create_app

    app = create_app(settings.replace(cors_origins=(ALLOWED,)))
    app.config["TESTING"] = True
    yield app.test_client()
    app.extensions["streamapp"].close()


@pytest.mark.parametrize(
    "path, method",
    [
        ("/api/v0/executions/workflows/any-id/stream-ticket", "POST"),
        ("/api/v0/executions/workflows/any-id/stream", "GET"),
        ("/api/v0/executions/workflows", "POST"),
        ("/api/v0/auth/login", "POST"),
        ("/api/v0/auth/tokens/abcdef012345", "DELETE"),
    ],
)
def test_app_preflight_from_an_allowed_origin(app_client, path, method):
    r = app_client.options(
        path,
        headers={
            "Origin": ALLOWED,
            "Access-Control-Request-Method": method,
            "Access-Control-Request-Headers": "Authorization, Content-Type",
        },
    )
    assert r.status_code == 204
    assert r.headers["Access-Control-Allow-Origin"] == ALLOWED
    assert r.headers["Access-Control-Allow-Credentials"] == "true"
    assert method in r.headers["Access-Control-Allow-Methods"]
    assert "Authorization" in r.headers["Access-Control-Allow-Headers"]


@pytest.mark.parametrize("origin", [OTHER, "null", "https://app.example.com.evil.net"])
def test_app_preflight_from_a_refused_origin(app_client, origin):
    r = _preflight(app_client, "/api/v0/executions/workflows/any-id/stream-ticket", origin)
    assert r.status_code == 403
    assert r.get_json()["error"]["code"] == "forbidden"
    assert _no_cors_headers(r)


def test_app_answers_an_allowed_origin_with_cors_headers(app_client, account):
    r = app_client.get("/api/v0/executions/workflows", headers={**account.headers, "Origin": ALLOWED})
    assert r.status_code == 200
    assert r.headers["Access-Control-Allow-Origin"] == ALLOWED
    assert "Origin" in r.headers["Vary"]
    r = app_client.get("/api/v0/executions/workflows", headers={**account.headers, "Origin": OTHER})
    assert r.status_code == 200 and _no_cors_headers(r)


def test_app_leaves_health_alone(app_client):
    r = app_client.get("/healthz", headers={"Origin": ALLOWED})
    assert _no_cors_headers(r)


def test_app_cookie_requests_follow_the_allow_list(app_client, account, workflow):
    # The session cookie's state changes and ticket requests pass the same origin rule as CORS.
    login = {"email": account.email, "password": account.password}
    assert app_client.post("/api/v0/auth/login", json=login, headers={"Origin": OTHER}).status_code == 403
    assert app_client.post("/api/v0/auth/login", json=login, headers={"Origin": ALLOWED}).status_code == 200
    ticket_url = f"/api/v0/executions/workflows/{workflow}/stream-ticket"
    assert app_client.post(ticket_url, headers={"Origin": OTHER}).status_code == 403
    r = app_client.post(ticket_url, headers={"Origin": ALLOWED})
    assert r.status_code == 201 and r.headers["Access-Control-Allow-Origin"] == ALLOWED
    create = app_client.post("/api/v0/executions/workflows", json={"name": "x"}, headers={"Origin": OTHER})
    assert create.status_code == 403
