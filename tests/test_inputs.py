"""What every view parses, under ordinary, random and adversarial input (SPEC §2 "Robustness", §5, §7; issue 11).

Bodies and their depth limit, query strings, cursors and tokens in URLs, through
the Flask test client and a real PostgreSQL. Whatever comes in, the answer is a
success or one of our 4xx problem documents: never a 500.
"""

from __future__ import annotations

import base64
import datetime
import json
import secrets
import typing as t

import pytest
from hypothesis import HealthCheck
from hypothesis import assume
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st
from marshmallow import ValidationError

from streamapp import create_app
from streamapp.schemas import parse_cursor
from tests.conftest import Account

API = "/api/v0"
WORKFLOWS = f"{API}/executions/workflows"
LOGIN = f"{API}/auth/login"
TOKENS = f"{API}/auth/tokens"
#: Every answer a request may get; anything else (a 500 above all) is a bug.
OURS = {200, 201, 202, 204, 400, 401, 403, 404, 409, 413, 422, 429}
# Function-scoped fixtures are fine here: examples share one app and its users on purpose.
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def _problem(response: t.Any) -> dict[str, str]:
    """Assert an answer is ours: a success, or exactly ``{"error": {"code", "message"}}``; return the error."""
    assert response.status_code in OURS, response.get_data(as_text=True)[:2000]
    if response.status_code < 400:
        return {}
    body = response.get_json()
    assert isinstance(body, dict) and set(body) == {"error"}, response.get_data(as_text=True)[:2000]
    assert set(body["error"]) == {"code", "message"}
    assert isinstance(body["error"]["code"], str) and isinstance(body["error"]["message"], str)
    return t.cast(dict[str, str], body["error"])


def _nested(depth: int, leaf: t.Any = 1) -> t.Any:
    """A value ``depth`` levels deep: lists inside an object, as JSON counts levels."""
    value = leaf
    for level in range(depth):
        value = {"k": value} if level % 2 else [value]
    return value


def _deep_text(depth: int) -> str:
    """``depth`` levels of arrays, written out without recursion (json.dumps would recurse)."""
    return "[" * depth + "]" * depth


@pytest.fixture(scope="module")
def app(settings):  # type: ignore[no-untyped-def]
    # One proxy hop: every login below comes "from" an address of its own, so the
    # failures it records never reach the per-address limit of other tests.
    app = create_app(settings.replace(proxy_hops=1))
    app.config["TESTING"] = True
    yield app
    app.extensions["streamapp"].close()


@pytest.fixture(scope="module")
def owner(auth) -> Account:  # type: ignore[no-untyped-def]
    return t.cast(Account, auth.user())


@pytest.fixture(scope="module")
def target(owner, producer) -> str:  # type: ignore[no-untyped-def]
    """A running workflow of ``owner`` that bodies are posted to."""
    exec_id = producer.create_execution("workflow", "fuzz", owner.user.get_id())["exec_id"]
    producer.append_events(exec_id, [{"type": "workflow_status", "data": {"status": "RUNNING"}}])
    return t.cast(str, exec_id)


@pytest.fixture(scope="module")
def clients(app, owner):  # type: ignore[no-untyped-def]
    """``(client, headers)`` for each way of coming in: anonymous, bearer token, session cookie."""
    cookie = app.test_client()
    r = cookie.post(LOGIN, json={"email": owner.email, "password": owner.password}, headers=_from_somewhere())
    assert r.status_code == 200
    return {"anonymous": (app.test_client(), {}), "bearer": (app.test_client(), owner.headers), "cookie": (cookie, {})}


def _from_somewhere() -> dict[str, str]:
    return {"X-Forwarded-For": f"10.{secrets.randbelow(256)}.{secrets.randbelow(256)}.{secrets.randbelow(256)}"}


def _body_paths(app: t.Any, exec_id: str) -> list[str]:
    """Every POST endpoint of the API, today's and any added later; logout is left out (it ends the session)."""
    adapter = app.url_map.bind("localhost")
    paths = []
    for rule in app.url_map.iter_rules():
        if "POST" not in (rule.methods or ()) or not rule.rule.startswith(API) or rule.rule.endswith("/logout"):
            continue
        values = {name: "workflows" if name in ("segment", "kind") else exec_id for name in rule.arguments}
        paths.append(adapter.build(rule.endpoint, values))
    return sorted(paths)


def _post(clients: t.Any, how: str, path: str, body: bytes | str) -> t.Any:
    client, headers = clients[how]
    return client.post(path, data=body, content_type="application/json", headers={**headers, **_from_somewhere()})


def test_every_body_endpoint_is_covered(app, target):
    paths = _body_paths(app, target)
    for expected in (WORKFLOWS, f"{WORKFLOWS}/{target}/events", f"{WORKFLOWS}/{target}/chunks", LOGIN, TOKENS):
        assert expected in paths


# -- the depth limit (SPEC §2 "Robustness") -------------------------------------------------------


@pytest.mark.parametrize("how", ["bearer", "cookie"])
@pytest.mark.parametrize("suffix", ["", "/events", "/chunks"])
def test_a_body_over_the_depth_limit_is_422_naming_it(clients, target, how, suffix):
    path = WORKFLOWS + (f"/{target}{suffix}" if suffix else "")
    for depth in (64, 100_000):  # the object around it is one more level
        error = _problem(_post(clients, how, path, '{"name": "x", "input": "[", "deep": ' + _deep_text(depth) + "}"))
        assert error["code"] == "invalid"
        assert "64" in error["message"] and "STREAMAPP_MAX_JSON_DEPTH" in error["message"]


@pytest.mark.parametrize("path", [LOGIN, TOKENS])
def test_login_and_token_bodies_have_the_limit_too(clients, path):
    how = "anonymous" if path == LOGIN else "cookie"
    for body in (_deep_text(100_000), '{"email": ' + _deep_text(65) + "}", '{"a": ' * 100_000):
        error = _problem(_post(clients, how, path, body))
        assert (error["code"], "STREAMAPP_MAX_JSON_DEPTH" in error["message"]) == ("invalid", True)


def test_a_body_at_the_depth_limit_is_accepted(clients):
    body = {"name": "deep", "input": _nested(63)}  # the outer object is level 1
    r = _post(clients, "bearer", WORKFLOWS, json.dumps(body))
    assert r.status_code == 201, r.get_data(as_text=True)
    assert r.get_json()["input"] == body["input"]


def test_events_at_the_depth_limit_are_stored(clients, target):
    body = {"events": [{"type": "deep_data", "data": {"v": _nested(60)}}]}  # {events [{data {v …
    r = _post(clients, "bearer", f"{WORKFLOWS}/{target}/events", json.dumps(body))
    assert r.status_code == 201, r.get_data(as_text=True)


def test_the_limit_is_configurable(make_client, owner):
    client = make_client(max_json_depth=8)
    ok = client.post(WORKFLOWS, json={"name": "x", "input": _nested(7)}, headers=owner.headers)
    deep = client.post(WORKFLOWS, json={"name": "x", "input": _nested(8)}, headers=owner.headers)
    assert ok.status_code == 201
    assert "8" in _problem(deep)["message"] and deep.status_code == 422


def test_a_deep_body_writes_no_traceback(clients, caplog):
    _problem(_post(clients, "anonymous", LOGIN, _deep_text(100_000)))
    assert not [r for r in caplog.records if r.exc_info]


# -- adversarial and random bodies on every endpoint ----------------------------------------------

ADVERSARIAL: list[bytes | str] = [
    _deep_text(100_000),
    '{"a":' * 100_000 + "1" + "}" * 100_000,
    "[" * 100_000,
    '{"name": "x", "input": ' + _deep_text(65) + "}",
    '"' + '\\"' * 50_000,
    '["\\"' + "[" * 1000 + '"]',
    '{"name": "x", "input": ' + "9" * 5000 + "}",
    '{"name": "x", "input": -' + "9" * 4000 + "}",
    '{"name": "x", "input": 1e999}',
    '{"name": "x", "input": 1' + "0" * 400 + ".5}",
    '{"name": "x", "input": NaN}',
    '{"events": [{"type": "x", "data": {"v": Infinity}}]}',
    '{"name": "\\ud800"}',
    '{"name": "x", "input": "\\udfff\\ud800"}',
    b'{"name": "\xed\xa0\x80"}',  # a surrogate written as UTF-8 bytes
    b'{"name": "\xc0\x80"}',  # an overlong NUL
    '{"name": "x"}'.encode("utf-16"),
    '{"name": "x"}'.encode("utf-32-le"),
    _deep_text(100_000).encode("utf-16-le"),
    b"\xef\xbb\xbf" + b'{"name": "x"}',
    b"\x00" * 16,
    b"",
    "null",
    "[]",
    '"just a string"',
    '{"name": "a\\u0000b", "email": "a\\u0000@b.c", "password": "x\\u0000", "text": "\\u0000"}',
    '{"email": "x@example.com", "password": "' + "p" * 100_000 + '"}',
    '{"events": [' + ",".join(['{"type": "x", "data": {}}'] * 1001) + "]}",
    '{"chunks": ' + json.dumps(["x"] * 1001) + "}",
    '{"name": "x", "output_schema": {"$ref": "#"}}',
    '{"name": "x", "output_schema": {"$ref": "#/$defs/a", "$defs": {"a": {"$ref": "#/$defs/a"}}}}',
    '{"name": "x", "exec_id": "' + "a" * 10_000 + '"}',
    '{"name": "x", "owner": "\\u0663"}',
    '{"name": "x", "owner": "\\u00b2"}',
    '{"name": "x", "owner": "' + "9" * 30 + '"}',
    '{"scopes": ["read", "' + "x" * 10_000 + '"]}',
    '{"ids": ["workflows/' + "a" * 100 + '"]}',
    '{"reason": "' + "\\r\\n" * 1000 + '"}',
]


@pytest.mark.parametrize("how", ["anonymous", "bearer", "cookie"])
@pytest.mark.parametrize("body", ADVERSARIAL, ids=[str(n) for n in range(len(ADVERSARIAL))])
def test_adversarial_bodies_get_our_answers(clients, target, how, body):
    for path in _body_paths(clients[how][0].application, target):
        _problem(_post(clients, how, path, body))


_TEXT = st.text(st.characters(codec=None, exclude_categories=()), max_size=40)
_JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=-(10**40), max_value=10**40)
    | st.floats(allow_nan=True, allow_infinity=True)
    | _TEXT,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(_TEXT, children, max_size=4),
    max_leaves=25,
)


@st.composite
def _shaped(draw: st.DrawFn) -> t.Any:
    """Bodies close to what an endpoint expects, so the random parts reach its checks."""
    shape = draw(st.sampled_from(["create", "events", "chunks", "login", "tokens", "any"]))
    if shape == "create":
        keys = st.sampled_from(["name", "input", "output_schema", "exec_id", "owner", "other"])
        return draw(st.dictionaries(keys, _JSON | _TEXT, max_size=5))
    if shape == "events":
        event = st.fixed_dictionaries({"type": _TEXT | st.sampled_from(["warning", "tool_call", "x"]), "data": _JSON})
        return {"events": draw(st.lists(event | _JSON, max_size=3))}
    if shape == "chunks":
        return draw(st.sampled_from([{"text": draw(_TEXT)}, {"chunks": draw(st.lists(_TEXT, max_size=3))}]))
    if shape == "login":
        return {"email": draw(_TEXT | _JSON), "password": draw(_TEXT | _JSON)}
    if shape == "tokens":
        return {"scopes": draw(st.lists(_TEXT | st.sampled_from(["read", "publish"]), max_size=3))}
    return draw(_JSON)


def _encode(value: t.Any, ascii_only: bool) -> bytes:
    # surrogatepass: a lone surrogate becomes the bytes a careless client would send.
    return json.dumps(value, ensure_ascii=ascii_only, allow_nan=True).encode("utf-8", "surrogatepass")


@FUZZ
@given(
    how=st.sampled_from(["anonymous", "bearer", "cookie"]),
    which=st.integers(min_value=0),
    body=(
        st.builds(_encode, _shaped(), st.booleans())
        | st.binary(max_size=200)
        | st.builds(lambda v, enc: json.dumps(v).encode(enc), _JSON, st.sampled_from(["utf-16", "utf-32"]))
    ),
)
def test_random_bodies_get_our_answers(clients, target, how, which, body):
    paths = _body_paths(clients[how][0].application, target)
    _problem(_post(clients, how, paths[which % len(paths)], body))


# -- tokens in URLs (SPEC §7) ---------------------------------------------------------------------


@pytest.mark.parametrize("param", ["token", "access_token", "api_key"])
@pytest.mark.parametrize(
    "method, path",
    [
        ("get", WORKFLOWS),
        ("post", WORKFLOWS),
        ("get", f"{WORKFLOWS}/x"),
        ("post", f"{WORKFLOWS}/x/events"),
        ("post", f"{WORKFLOWS}/x/chunks"),
        ("post", f"{WORKFLOWS}/x/stream-ticket"),
        ("get", f"{WORKFLOWS}/x/stream"),
        ("get", f"{API}/events/catalog"),
        ("post", LOGIN),
        ("post", f"{API}/auth/logout"),
        ("get", TOKENS),
        ("post", TOKENS),
        ("delete", f"{TOKENS}/0123456789ab"),
    ],
)
@pytest.mark.parametrize("how", ["anonymous", "bearer"])
def test_a_token_in_the_url_is_400_with_the_how_to_before_authentication(clients, owner, method, path, param, how):
    client, headers = clients[how]
    r = getattr(client, method)(path, query_string={param: owner.token}, headers=headers, json={})
    error = _problem(r)
    assert (r.status_code, error["code"]) == (400, "bad_request")
    assert "Authorization: Bearer" in error["message"] and "ticket" in error["message"]


# -- cursors and query parameters (SPEC §5) -------------------------------------------------------

INT64_LIMIT = 2**63


@pytest.fixture(scope="module")
def ended(owner, producer) -> str:  # type: ignore[no-untyped-def]
    """A workflow whose terminal event is id 1: any cursor ≥ 1 answers 204, no stream opens."""
    exec_id = producer.create_execution("workflow", "done", owner.user.get_id())["exec_id"]
    producer.append_events(exec_id, [{"type": "complete", "data": {"status": "SUCCESS"}}])
    return t.cast(str, exec_id)


def _stream(clients: t.Any, exec_id: str, headers: dict[str, str] | None = None, **params: str) -> t.Any:
    client, auth = clients["bearer"]
    return client.get(f"{WORKFLOWS}/{exec_id}/stream", headers={**auth, **(headers or {})}, query_string=params)


@pytest.mark.parametrize(
    "cursor",
    ["1", "999999999999999999", "1000000000000000000", str(INT64_LIMIT - 1), "0" * 40 + "7", "00001"],
)
def test_any_cursor_below_2_63_is_accepted(clients, ended, cursor):
    assert _stream(clients, ended, {"Last-Event-ID": cursor}).status_code == 204
    assert _stream(clients, ended, last_event_id=cursor).status_code == 204


@pytest.mark.parametrize(
    "cursor",
    [
        str(INT64_LIMIT),
        str(INT64_LIMIT + 1),
        "9" * 19,
        "9" * 5000,
        "-1",
        "+1",
        " 1",
        "1 ",
        "1.0",
        "1e3",
        "0x10",
        "\u0663",
        "\uff11",
        "1_000",
        "",
    ],
)
def test_a_cursor_of_2_63_or_not_plain_digits_is_400(clients, ended, cursor):
    header = _stream(clients, ended, {"Last-Event-ID": cursor})
    query = _stream(clients, ended, last_event_id=cursor)
    for r, name in ((header, "Last-Event-ID"), (query, "last_event_id")):
        assert r.status_code == 400 and name in _problem(r)["message"]


_QUERY_TEXT = st.text(st.characters(codec="utf-8"), max_size=30) | st.from_regex(r"[0-9]{1,25}", fullmatch=True)


@FUZZ
@given(cursor=_QUERY_TEXT, header=st.booleans())
def test_random_cursors_are_204_or_400(clients, ended, cursor, header):
    plain = cursor.isascii() and cursor.isdigit()
    assume(not (plain and int(cursor) == 0))  # a cursor of 0 opens a stream
    assume(not (header and set(cursor) & set("\r\n\x00")))  # no client can send those in a header
    r = _stream(clients, ended, {"Last-Event-ID": cursor}) if header else _stream(clients, ended, last_event_id=cursor)
    expected = 204 if plain and 1 <= int(cursor) < INT64_LIMIT else 400
    assert r.status_code == expected, (cursor, r.get_data(as_text=True))
    _problem(r)


@FUZZ
@given(
    params=st.dictionaries(
        st.sampled_from(["events", "poll_ms", "ticket", "last_event_id", "other", "limit"]), _QUERY_TEXT, max_size=3
    )
)
def test_random_stream_parameters_are_204_or_400(clients, ended, params):
    params.pop("last_event_id", None)
    r = _stream(clients, ended, {"Last-Event-ID": "1"}, **params)
    assert r.status_code in (204, 400, 401), r.get_data(as_text=True)
    _problem(r)


@FUZZ
@given(limit=_QUERY_TEXT, cursor=_QUERY_TEXT | st.binary(max_size=60).map(base64.urlsafe_b64encode).map(bytes.decode))
def test_random_list_parameters_are_200_or_400(clients, limit, cursor):
    client, headers = clients["bearer"]
    r = client.get(WORKFLOWS, headers=headers, query_string={"limit": limit, "cursor": cursor})
    assert r.status_code in (200, 400), r.get_data(as_text=True)
    _problem(r)


def _list_cursor(ts: str, exec_id: str) -> str:
    return base64.urlsafe_b64encode(f"{ts}|{exec_id}".encode()).decode().rstrip("=")


_DAY = datetime.timedelta(hours=23, minutes=59)
_OFFSETS = st.timedeltas(min_value=-_DAY, max_value=_DAY)


@FUZZ
@given(
    moment=st.datetimes(),
    offset=_OFFSETS,
    exec_id=st.text(st.characters(codec="utf-8"), max_size=70),
)
def test_forged_list_cursors_are_200_or_400(clients, moment, offset, exec_id):
    client, headers = clients["bearer"]
    ts = moment.replace(tzinfo=datetime.timezone(offset)).isoformat()
    r = client.get(WORKFLOWS, headers=headers, query_string={"cursor": _list_cursor(ts, exec_id)})
    assert r.status_code in (200, 400), r.get_data(as_text=True)
    _problem(r)


# -- the parsers themselves ----------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(st.integers(min_value=0, max_value=INT64_LIMIT - 1), st.integers(min_value=0, max_value=30))
def test_parse_cursor_reads_every_int64(value, zeros):
    assert parse_cursor("0" * zeros + str(value)) == value


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=30))
def test_parse_cursor_refuses_everything_else(text):
    plain = text.isascii() and text.isdigit() and int(text) < INT64_LIMIT
    if plain:
        assert parse_cursor(text) == int(text)
    else:
        with pytest.raises(ValidationError):
            parse_cursor(text)


@pytest.mark.parametrize(
    "schema",
    [
        {"$ref": "#"},
        {"allOf": [{"$ref": "#"}]},
        {"$ref": "#/$defs/a", "$defs": {"a": {"$ref": "#/$defs/b"}, "b": {"$ref": "#/$defs/a"}}},
        {"properties": {"a": {"$ref": "#/properties/a"}}},
    ],
)
def test_an_output_schema_that_refers_to_itself_without_end_is_422_not_500(clients, schema):
    """Validating against a $ref cycle that never moves into the value would recurse until RecursionError."""
    created = _post(clients, "bearer", f"{API}/executions/agents", json.dumps({"name": "x", "output_schema": schema}))
    if created.status_code == 422:
        return  # refused when created: as good
    assert created.status_code == 201, created.get_data(as_text=True)
    done = {"events": [{"type": "complete", "data": {"status": "SUCCESS", "output": {"a": 1}}}]}
    path = f"{API}/executions/agents/{created.get_json()['exec_id']}/events"
    error = _problem(_post(clients, "bearer", path, json.dumps(done)))
    assert error["code"] == "invalid"
