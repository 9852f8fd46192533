"""``GET …/openapi.json``: an OpenAPI 3.1 document of exactly the registered endpoints, whose
schemas are the ones the views accept and answer with (SPEC §2, issue 9).

No OpenAPI validator package: openapi-spec-validator pulls fourteen packages (pydantic among
them) into the dev pins. The structure is checked here, and every schema in the document
against JSON Schema 2020-12 (OpenAPI 3.1's dialect) with the jsonschema we already pin.
"""

from __future__ import annotations

import re
import typing as t

import flask
import jsonschema
import pytest

from streamapp import StreamApp
from streamapp import openapi
from tests.conftest import host_app

HTTP_METHODS = {"get", "put", "post", "delete", "options", "head", "patch", "trace"}
PATH_ITEM_KEYS = HTTP_METHODS | {"summary", "description", "servers", "parameters", "$ref"}
TOP_LEVEL_KEYS = {
    "openapi",
    "info",
    "jsonSchemaDialect",
    "servers",
    "paths",
    "webhooks",
    "components",
    "security",
    "tags",
    "externalDocs",
}
COMPONENT_KEYS = {
    "schemas",
    "responses",
    "parameters",
    "examples",
    "requestBodies",
    "headers",
    "securitySchemes",
    "links",
    "callbacks",
    "pathItems",
}
RULE_VARIABLE = re.compile(r"<(?:[^<>:]+:)?([^<>]+)>")


def _doc(client, prefix: str = "/api/v0") -> dict[str, t.Any]:
    r = client.get(f"{prefix}/openapi.json")
    assert r.status_code == 200, r.get_data(as_text=True)
    return t.cast(dict[str, t.Any], r.get_json())


def _pointer(doc: dict[str, t.Any], ref: str) -> t.Any:
    assert ref.startswith("#/"), ref
    node: t.Any = doc
    for part in ref[2:].split("/"):
        node = node[part.replace("~1", "/").replace("~0", "~")]
    return node


def _resolve(doc: dict[str, t.Any], node: t.Any) -> t.Any:
    while isinstance(node, dict) and "$ref" in node:
        node = _pointer(doc, node["$ref"])
    return node


def _walk(node: t.Any, key: str | None = None) -> t.Iterator[tuple[str | None, t.Any]]:
    yield key, node
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _walk(v, k)
    elif isinstance(node, list):
        for v in node:
            yield from _walk(v, key)


def _operations(doc: dict[str, t.Any]) -> t.Iterator[tuple[str, str, dict[str, t.Any]]]:
    for path, item in doc["paths"].items():
        for method, op in item.items():
            if method in HTTP_METHODS:
                yield path, method, op


def _registered(app: flask.Flask, prefix: str) -> dict[str, set[str]]:
    """Every rule under ``prefix``, as OpenAPI paths and their methods (HEAD and OPTIONS are Flask's)."""
    rules: dict[str, set[str]] = {}
    for rule in app.url_map.iter_rules():
        if rule.rule.startswith(prefix + "/"):
            path = RULE_VARIABLE.sub(lambda m: "{" + {"segment": "kind"}.get(m[1], m[1]) + "}", rule.rule)
            methods = {m.lower() for m in (rule.methods or ())} - {"head", "options"}
            rules.setdefault(path, set()).update(methods)
    return rules


def _validator(doc: dict[str, t.Any], schema: dict[str, t.Any]) -> jsonschema.Draft202012Validator:
    # The components ride along in the root, so "#/components/…" references resolve.
    return jsonschema.Draft202012Validator({**schema, "components": doc["components"]})


def _check(doc: dict[str, t.Any], component: str, instance: t.Any) -> None:
    _validator(doc, {"$ref": f"#/components/schemas/{component}"}).validate(instance)


def _answer_schema(doc, path: str, method: str, status: int) -> dict[str, t.Any]:
    response = _resolve(doc, doc["paths"][path][method]["responses"][str(status)])
    return t.cast(dict[str, t.Any], response["content"]["application/json"]["schema"])


def _sample(doc: dict[str, t.Any], schema: dict[str, t.Any]) -> t.Any:
    """The smallest value a schema accepts: required properties only, minimum sizes."""
    schema = _resolve(doc, schema)
    if "oneOf" in schema:
        return _sample(doc, schema["oneOf"][0])
    if "enum" in schema:
        return schema["enum"][0]
    types = schema.get("type")
    kind = next(x for x in types if x != "null") if isinstance(types, list) else types
    if kind == "object":
        return {name: _sample(doc, schema["properties"][name]) for name in schema.get("required", [])}
    if kind == "array":
        return [_sample(doc, schema.get("items", {})) for _ in range(max(1, schema.get("minItems", 1)))]
    if kind == "string":
        text = "a" * max(1, schema.get("minLength", 1))
        assert re.search(schema.get("pattern", ""), text), schema
        return text
    if kind == "integer":
        return schema.get("minimum", 0)
    if kind == "boolean":
        return True
    return {}  # no type: any JSON value


def _body(doc, path: str, method: str = "post", choice: int = 0) -> t.Any:
    """A body generated from the documented request schema, checked against it first."""
    schema = doc["paths"][path][method]["requestBody"]["content"]["application/json"]["schema"]
    if "oneOf" in schema:
        schema = schema["oneOf"][choice]
    body = _sample(doc, schema)
    _validator(doc, schema).validate(body)
    return body


# -- the document itself ---------------------------------------------------------------------------


def test_is_openapi_3_1_and_structurally_valid(client):
    doc = _doc(client)
    assert doc["openapi"] == "3.1.0"
    assert set(doc) <= TOP_LEVEL_KEYS
    assert set(doc["components"]) <= COMPONENT_KEYS
    assert isinstance(doc["info"]["title"], str) and isinstance(doc["info"]["version"], str)
    schemes = doc["components"]["securitySchemes"]
    operation_ids = []
    for path, item in doc["paths"].items():
        assert path.startswith("/") and set(item) <= PATH_ITEM_KEYS, path
        template = set(re.findall(r"\{([^}]+)\}", path))
        for method, op in ((m, o) for m, o in item.items() if m in HTTP_METHODS):
            operation_ids.append(op["operationId"])
            parameters = [*item.get("parameters", []), *op.get("parameters", [])]
            assert len({(p["name"], p["in"]) for p in parameters}) == len(parameters), (path, method)
            for parameter in parameters:
                assert parameter["in"] in ("query", "header", "path", "cookie") and "schema" in parameter
                if parameter["in"] == "path":
                    assert parameter["required"] is True
            assert {p["name"] for p in parameters if p["in"] == "path"} == template, (path, method)
            assert op["responses"], (path, method)
            for status, response in op["responses"].items():
                assert re.fullmatch(r"[1-5](\d\d|XX)|default", status), status
                assert isinstance(_resolve(doc, response)["description"], str)
            assert any(s.startswith("2") for s in op["responses"]), (path, method)
            if "requestBody" in op:
                assert op["requestBody"]["content"]
            for requirement in op["security"]:
                assert set(requirement) <= set(schemes), (path, method)
    assert len(operation_ids) == len(set(operation_ids))
    for scheme in schemes.values():
        assert scheme["type"] in ("http", "apiKey")
        assert scheme.get("scheme") == "bearer" or scheme["in"] in ("query", "header", "cookie")
    # Every schema object, in components or inline, is a valid JSON Schema 2020-12 schema.
    schemas = [node for key, node in _walk(doc) if key in ("schema", "items") and isinstance(node, dict)]
    schemas += list(doc["components"]["schemas"].values())
    for schema in schemas:
        jsonschema.Draft202012Validator.check_schema(schema)


def test_every_ref_resolves(client):
    doc = _doc(client)
    refs = [node for key, node in _walk(doc) if key == "$ref"]
    assert refs
    for ref in refs:
        assert _pointer(doc, ref) is not None, ref


def test_documents_exactly_the_registered_rules(app, client):
    doc = _doc(client)
    documented = {path: {m for m in item if m in HTTP_METHODS} for path, item in doc["paths"].items()}
    assert documented == _registered(app, "/api/v0")
    # Each one described in full, not only listed; SPEC's endpoints the code lacks are absent.
    endpoints = {r.endpoint for r in app.url_map.iter_rules() if r.rule.startswith("/api/v0/")}
    assert endpoints <= set(openapi.OPERATIONS)
    for missing in ("/api/v0/stream-tickets", "/api/v0/streams"):
        assert (missing in documented) == (missing in _registered(app, "/api/v0"))
    expected = {
        "/api/v0/executions/{kind}": {"get", "post"},
        "/api/v0/executions/{kind}/{exec_id}": {"get"},
        "/api/v0/executions/{kind}/{exec_id}/events": {"post"},
        "/api/v0/executions/{kind}/{exec_id}/chunks": {"post"},
        "/api/v0/executions/{kind}/{exec_id}/stream-ticket": {"post"},
        "/api/v0/executions/{kind}/{exec_id}/stream": {"get"},
        "/api/v0/events/catalog": {"get"},
        "/api/v0/auth/login": {"post"},
        "/api/v0/auth/logout": {"post"},
        "/api/v0/auth/tokens": {"get", "post"},
        "/api/v0/auth/tokens/{prefix}": {"delete"},
        "/api/v0/openapi.json": {"get"},
    }
    assert {p: documented.get(p) for p in expected} == expected


def test_paths_follow_the_url_map_not_a_list(app):
    """A rule added under the prefix shows up (bare, so the test above fails until it is described)."""
    extra = flask.Blueprint("streamapp_later", __name__)
    extra.add_url_rule("/later/<exec_id>", "later", lambda exec_id: "", methods=["PUT"])
    app.register_blueprint(extra, url_prefix="/api/v0")
    doc = _doc(app.test_client())
    assert set(doc["paths"]["/api/v0/later/{exec_id}"]) == {"put", "parameters"}
    assert {p["name"] for p in doc["paths"]["/api/v0/later/{exec_id}"]["parameters"]} == {"exec_id"}


def test_errors_share_one_error_component(client):
    doc = _doc(client)
    for name, response in doc["components"]["responses"].items():
        assert response["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/Error"}, name
    for path, method, op in _operations(doc):
        errors = {int(s): r for s, r in op["responses"].items() if int(s) >= 400}
        for status, response in errors.items():
            assert response["$ref"].startswith("#/components/responses/"), (path, method, status)
            headers = _resolve(doc, response).get("headers", {})
            assert ("Retry-After" in headers) == (status in (429, 503))
        assert 400 in errors  # a token in the URL is refused on every endpoint (SPEC §7)
        if "requestBody" in op:
            assert {413, 422} <= set(errors), (path, method)
        if op["security"] and {} not in op["security"]:
            assert {401, 503} <= set(errors), (path, method)
    stream = doc["paths"]["/api/v0/executions/{kind}/{exec_id}/stream"]["get"]["responses"]
    assert {"200", "204", "400", "401", "404", "429", "503"} <= set(stream)


def test_security_schemes_and_stream_parameters(client):
    doc = _doc(client)
    assert doc["components"]["securitySchemes"] == {
        "bearerAuth": {"type": "http", "scheme": "bearer"},
        "sessionCookie": {"type": "apiKey", "in": "cookie", "name": "session"},
        "streamTicket": {"type": "apiKey", "in": "query", "name": "ticket"},
    }
    stream_item = doc["paths"]["/api/v0/executions/{kind}/{exec_id}/stream"]
    stream = stream_item["get"]
    assert {"streamTicket": []} in stream["security"]
    assert "text/event-stream" in stream["responses"]["200"]["content"]
    names = {(p["name"], p["in"]) for p in stream["parameters"]}
    assert names == {
        ("last_event_id", "query"),
        ("events", "query"),
        ("poll_ms", "query"),
        ("ticket", "query"),
        ("Last-Event-ID", "header"),
    }
    kind = next(p for p in stream_item["parameters"] if p["name"] == "kind")
    assert kind["schema"]["enum"] == ["workflows", "agents", "tasks"]
    append = doc["paths"]["/api/v0/executions/{kind}/{exec_id}/events"]["post"]
    assert {"bearerAuth": ["publish"]} in append["security"]
    for path in ("/api/v0/openapi.json", "/api/v0/auth/login"):
        assert doc["paths"][path]["post" if "login" in path else "get"]["security"] == []


def test_served_without_credentials_built_once_and_cacheable(app, client):
    first = client.get("/api/v0/openapi.json")
    assert first.status_code == 200 and first.mimetype == "application/json"
    assert first.headers["Cache-Control"].startswith("public, max-age=")
    assert app.extensions[openapi.DOCUMENT_KEY] == first.get_data()
    assert client.get("/api/v0/openapi.json").get_data() == first.get_data()
    refused = client.get("/api/v0/openapi.json?token=sa_0123456789ab_x")
    assert refused.status_code == 400 and refused.get_json()["error"]["code"] == "bad_request"


# -- the schemas are what the views accept and answer ------------------------------------------


def test_request_schemas_are_what_the_api_views_accept(client, account):
    doc = _doc(client)
    base = "/api/v0/executions/{kind}"
    kind = _sample(doc, {"enum": ["workflows", "agents", "tasks"]})
    headers = account.headers

    r = client.post(f"/api/v0/executions/{kind}", json=_body(doc, base), headers=headers)
    assert r.status_code == 201, r.get_data(as_text=True)
    _validator(doc, _answer_schema(doc, base, "post", 201)).validate(r.get_json())
    exec_id = r.get_json()["exec_id"]
    one = f"/api/v0/executions/{kind}/{exec_id}"
    r = client.get(one, headers=headers)
    _validator(doc, _answer_schema(doc, base + "/{exec_id}", "get", 200)).validate(r.get_json())
    r = client.get(f"/api/v0/executions/{kind}?limit=1", headers=headers)
    _validator(doc, _answer_schema(doc, base, "get", 200)).validate(r.get_json())

    r = client.post(one + "/events", json=_body(doc, base + "/{exec_id}/events"), headers=headers)
    assert r.status_code == 201, r.get_data(as_text=True)
    _validator(doc, _answer_schema(doc, base + "/{exec_id}/events", "post", 201)).validate(r.get_json())
    for choice in (0, 1):  # {text} and {chunks}
        r = client.post(one + "/chunks", json=_body(doc, base + "/{exec_id}/chunks", choice=choice), headers=headers)
        assert r.status_code == 202, r.get_data(as_text=True)
        _validator(doc, _answer_schema(doc, base + "/{exec_id}/chunks", "post", 202)).validate(r.get_json())
    r = client.post(one + "/stream-ticket", headers=headers)
    assert r.status_code == 201, r.get_data(as_text=True)
    _validator(doc, _answer_schema(doc, base + "/{exec_id}/stream-ticket", "post", 201)).validate(r.get_json())

    cancel = doc["paths"][base + "/{exec_id}/cancel"]["post"]
    assert cancel["requestBody"]["required"] is False
    r = client.post(one + "/cancel", json=_body(doc, base + "/{exec_id}/cancel"), headers=headers)
    assert r.status_code == 200, r.get_data(as_text=True)
    _validator(doc, _answer_schema(doc, base + "/{exec_id}/cancel", "post", 200)).validate(r.get_json())


def test_error_and_catalog_answers_match_their_schemas(client, account):
    doc = _doc(client)
    missing = client.get("/api/v0/executions/workflows/no-such-id", headers=account.headers)
    assert missing.status_code == 404
    _check(doc, "Error", missing.get_json())
    refused = client.post("/api/v0/executions/workflows", json={"name": ""}, headers=account.headers)
    assert refused.status_code == 422
    _check(doc, "Error", refused.get_json())
    catalog = client.get("/api/v0/events/catalog", headers=account.headers)
    _validator(doc, _answer_schema(doc, "/api/v0/events/catalog", "get", 200)).validate(catalog.get_json())


def test_stream_parameters_are_what_the_stream_view_accepts(client, account, workflow):
    doc = _doc(client)
    path = "/api/v0/executions/{kind}/{exec_id}/stream"
    url = f"/api/v0/executions/workflows/{workflow}"
    ended = client.post(url + "/cancel", headers=account.headers)
    assert ended.status_code == 200
    terminal = ended.get_json()["last_event_id"]
    ticket = client.post(url + "/stream-ticket", headers=account.headers).get_json()["ticket"]
    parameters = {p["name"]: p for p in doc["paths"][path]["get"]["parameters"]}
    values = {name: _sample(doc, p["schema"]) for name, p in parameters.items()}
    values.update(ticket=ticket, last_event_id=terminal, **{"Last-Event-ID": terminal})
    for name, value in values.items():
        _validator(doc, parameters[name]["schema"]).validate(value)
    query = {k: str(v) for k, v in values.items() if parameters[k]["in"] == "query"}
    # Every parameter at once, with values the schemas accept: past validation, to the 204 (SPEC §5.4).
    r = client.get(url + "/stream", query_string=query, headers={"Last-Event-ID": str(terminal)})
    assert r.status_code == 204, r.get_data(as_text=True)
    assert r.mimetype == "text/event-stream"
    # A value the schema refuses, the view refuses too.
    too_slow = parameters["poll_ms"]["schema"]["maximum"] + 1
    r = client.get(url + "/stream", query_string={**query, "poll_ms": str(too_slow)})
    assert r.status_code == 400
    _check(doc, "Error", r.get_json())


def test_auth_schemas_are_what_the_auth_views_accept(client, account):
    doc = _doc(client)
    login = _body(doc, "/api/v0/auth/login")
    assert set(login) == {"email", "password"}
    r = client.post("/api/v0/auth/login", json={"email": account.email, "password": account.password})
    assert r.status_code == 200, r.get_data(as_text=True)
    _validator(doc, _answer_schema(doc, "/api/v0/auth/login", "post", 200)).validate(r.get_json())
    r = client.post("/api/v0/auth/tokens", json=_body(doc, "/api/v0/auth/tokens"))
    assert r.status_code == 201, r.get_data(as_text=True)
    _validator(doc, _answer_schema(doc, "/api/v0/auth/tokens", "post", 201)).validate(r.get_json())
    prefix = r.get_json()["prefix"]
    _validator(doc, next(p for p in doc["paths"]["/api/v0/auth/tokens/{prefix}"]["parameters"])["schema"]).validate(
        prefix
    )
    r = client.get("/api/v0/auth/tokens")
    _validator(doc, _answer_schema(doc, "/api/v0/auth/tokens", "get", 200)).validate(r.get_json())
    json_type = {"Content-Type": "application/json"}  # a cookie's state change is JSON (SPEC §7)
    assert client.delete(f"/api/v0/auth/tokens/{prefix}", headers=json_type).status_code == 204
    assert client.post("/api/v0/auth/logout", headers=json_type).status_code == 204


# -- extension mode ----------------------------------------------------------------------------------


@pytest.fixture
def host(settings):
    app = host_app()
    StreamApp(settings=settings, url_prefix="/progress").init_app(app)
    yield app
    app.extensions["streamapp"].close()


def test_extension_mode_documents_the_hosts_prefix(host):
    client = host.test_client()
    assert client.get("/api/v0/openapi.json").status_code == 404
    doc = _doc(client, "/progress")
    documented = {path: {m for m in item if m in HTTP_METHODS} for path, item in doc["paths"].items()}
    assert documented == _registered(host, "/progress")
    assert "/progress/executions/{kind}/{exec_id}/stream" in documented
    assert not any(p.startswith("/progress/auth") for p in documented)  # the host owns sign-in
    # The host's users: no bearer tokens of ours to document.
    assert set(doc["components"]["securitySchemes"]) == {"sessionCookie", "streamTicket"}
    r = client.post(
        "/progress/executions/workflows", json=_body(doc, "/progress/executions/{kind}"), headers={"X-User": "alice"}
    )
    assert r.status_code == 201, r.get_data(as_text=True)
    _check(doc, "ExecutionOut", r.get_json())
