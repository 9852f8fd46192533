"""``GET {prefix}/openapi.json``: the OpenAPI 3.1 document of the API (SPEC §2).

apispec's MarshmallowPlugin writes every request and response schema from
:mod:`streamapp.schemas`, the schemas the views load and dump with. The paths
come from the app's own ``url_map``: each rule of ours under the prefix is
documented with its methods, and nothing else is, so an endpoint SPEC lists
but the code does not have yet is never promised. The document is built once
per app, at its first request (every blueprint is registered by then: Flask
refuses setup after it), and kept in ``app.extensions``.
What each endpoint takes and answers beyond its schemas (summary, status,
errors, credentials) is the table in :mod:`streamapp.openapi_operations`.
"""

from __future__ import annotations

import json
import re
import typing as t

from apispec import APISpec
from apispec.ext.marshmallow import MarshmallowPlugin
from flask import Blueprint
from flask import Flask
from flask import Response
from flask import current_app
from marshmallow import Schema
from marshmallow import fields

from . import accounts
from . import catalog
from . import schemas
from .auth import refuse_token_in_url
from .cors import under_prefix
from .openapi_operations import ERRORS
from .openapi_operations import OPERATIONS as OPERATIONS
from .openapi_operations import PATH_PARAMETERS
from .openapi_operations import QUERY_DOCS
from .openapi_operations import Operation
from .state import EXTENSION_KEY
from .state import State

bp = Blueprint("streamapp_openapi", __name__)
# Before anything else, as on every endpoint under the prefix: a token in the URL is 400 (SPEC §7).
bp.before_request(refuse_token_in_url)

DOCUMENT_KEY = "streamapp.openapi"
#: The contract's version (SPEC.md, "external contract (v1)"), not the URL's /v0.
API_VERSION = "1.0.0"
CACHE_CONTROL = "public, max-age=3600"
_MAX_CURSOR = 2**63 - 1
_TYPE = catalog.TYPE_PATTERN.pattern
_RENAMED = {"segment": "kind"}  # api.py and stream.py name the kind segment differently
_DESCRIPTION = (
    "Progress of workflows, agents and tasks over Server-Sent Events. Every error body is "
    '{"error": {"code", "message"}}; 429 and 503 carry Retry-After. With the session cookie, a request '
    "that changes state must be Content-Type: application/json, even without a body (SPEC §7)."
)
_RULE_VARIABLE = re.compile(r"<(?:[^<>:]+:)?([^<>]+)>")


Requirements = list[dict[str, list[str]]]


def _security(auth: str, own_users: bool) -> Requirements:
    # OpenAPI 3.1 lets a non-OAuth requirement name roles: ours are the token's scopes.
    # In extension mode with the host's users (SPEC §7) bearer tokens are the host's business.
    bearer: Requirements = [{"bearerAuth": [auth if auth == "publish" else "read"]}] if own_users else []
    signed_in: Requirements = [*bearer, {"sessionCookie": []}]
    chosen: dict[str, Requirements] = {
        "none": [],
        "optional": [{}, {"sessionCookie": []}],
        "session": [{"sessionCookie": []}],
        "stream": [*signed_in, {"streamTicket": []}],
    }
    return chosen.get(auth, signed_in)


def _field_rules(converter: t.Any, field: fields.Field[t.Any], ret: dict[str, t.Any], **_: t.Any) -> dict[str, t.Any]:
    """What apispec cannot read off our own fields and validators."""
    extra: dict[str, t.Any] = {}
    if isinstance(field, schemas.CursorField):
        extra = {"minimum": 0} if isinstance(field, schemas.PlainInteger) else {"minimum": 0, "maximum": _MAX_CURSOR}
    elif isinstance(field, schemas.TypeList):
        extra = {"pattern": f"^{_TYPE}(,{_TYPE})*$"}
    pattern = ret.get("pattern")
    if pattern and not pattern.startswith("^"):
        # The API holds the whole value to these (exec ids: producer.EXEC_ID_PATTERN.fullmatch).
        extra["pattern"] = f"^(?:{pattern})$"
    return {k: v for k, v in extra.items() if k not in ret or k == "pattern"}


def _query(plugin: MarshmallowPlugin, schema: type[Schema]) -> list[dict[str, t.Any]]:
    out = []
    for parameter in plugin.converter.schema2parameters(schema, location="query"):  # type: ignore[union-attr]
        prop = parameter["schema"]
        # A missing parameter is the default; "null" cannot be written in a query string.
        if prop.get("default", 0) is None:
            del prop["default"]
        if isinstance(prop.get("type"), list):
            prop["type"] = next(x for x in prop["type"] if x != "null")
        out.append({**parameter, "description": QUERY_DOCS.get(parameter["name"], "")})
    return out


def _responses(op: Operation) -> dict[str, t.Any]:
    if op.answer is not None:
        ok: dict[str, t.Any] = {"content": {"application/json": {"schema": op.answer}}}
    elif op.auth == "stream":
        ok = {
            "content": {"text/event-stream": {"schema": {"type": "string"}}},
            "headers": {
                "Cache-Control": {"schema": {"type": "string", "const": "no-cache, no-transform"}},
                "X-Accel-Buffering": {"schema": {"type": "string", "const": "no"}},
            },
        }
    elif op.ok == 200:
        ok = {"content": {"application/json": {"schema": {"type": "object"}}}}
    else:
        ok = {}
    responses: dict[str, t.Any] = {str(op.ok): {"description": op.summary, **ok}}
    if op.auth == "stream":
        responses["204"] = {
            "description": "The execution has ended and the cursor is at or past its terminal event: "
            "Content-Type text/event-stream and no body, so clients stop reconnecting (SPEC §5)."
        }
    responses.update({str(status): ERRORS[status][0] for status in op.errors})
    return responses


def _operation(plugin: MarshmallowPlugin, name: str, op: Operation, own_users: bool) -> dict[str, t.Any]:
    out: dict[str, t.Any] = {
        "operationId": name,
        "summary": op.summary,
        "security": _security(op.auth, own_users),
        "responses": _responses(op),
    }
    if op.description:
        out["description"] = op.description
    parameters = _query(plugin, op.query) if op.query else []
    if op.auth == "stream":
        parameters.append(
            {
                "name": "Last-Event-ID",
                "in": "header",
                "required": False,
                "schema": {"type": "integer", "minimum": 0, "maximum": _MAX_CURSOR},
                "description": "resume after this id; wins over last_event_id",
            }
        )
    if parameters:
        out["parameters"] = parameters
    if op.body:
        body: t.Any = op.body[0] if len(op.body) == 1 else {"oneOf": list(op.body)}
        out["requestBody"] = {"required": op.body_required, "content": {"application/json": {"schema": body}}}
    return out


def openapi_path(rule: str) -> str:
    """A Flask rule (``/x/<segment>/<exec_id>``) as an OpenAPI path (``/x/{kind}/{exec_id}``)."""
    return _RULE_VARIABLE.sub(lambda m: "{" + _RENAMED.get(m.group(1), m.group(1)) + "}", rule)


def _path_parameter(name: str) -> dict[str, t.Any]:
    described: dict[str, t.Any] = PATH_PARAMETERS.get(name, {"schema": {"type": "string"}})
    return {"name": name, "in": "path", "required": True, **described}


def _refine(doc: dict[str, t.Any]) -> None:
    """Name what the views check by hand inside fields the schemas leave open."""
    found = doc["components"]["schemas"]
    if "EventsAppend" in found:  # each event: catalog.validate_event, not marshmallow
        found["EventsAppend"]["properties"]["events"]["items"] = {"$ref": "#/components/schemas/EventIn"}
    if "TokenCreate" in found:  # scope names: accounts.expand_scopes
        found["TokenCreate"]["properties"]["scopes"]["items"]["enum"] = list(accounts.SCOPES)


def build_document(app: Flask) -> dict[str, t.Any]:
    """The OpenAPI 3.1 document of every streamapp rule registered on ``app`` under its prefix."""
    state: State = app.extensions[EXTENSION_KEY]
    plugin = MarshmallowPlugin()
    spec = APISpec(
        title="streamapp",
        version=API_VERSION,
        openapi_version="3.1.0",
        plugins=[plugin],
        info={"description": _DESCRIPTION},
    )
    # apispec leaves map_to_openapi_type unannotated.
    plugin.map_to_openapi_type(schemas.CursorField, fields.Integer)  # type: ignore[no-untyped-call]
    plugin.map_to_openapi_type(schemas.TypeList, fields.String)  # type: ignore[no-untyped-call]
    plugin.converter.add_attribute_function(_field_rules)  # type: ignore[union-attr]
    spec.components.schema("Error", schema=schemas.ErrorOut)
    spec.components.schema("EventIn", schema=schemas.EventIn)
    retry_after = {"description": "seconds to wait", "schema": {"type": "integer", "minimum": 1}}
    spec.components.header("RetryAfter", retry_after)
    for status, (name, description) in ERRORS.items():
        response = {"description": description, "content": {"application/json": {"schema": schemas.ErrorOut}}}
        if status in (429, 503):
            response["headers"] = {"Retry-After": "RetryAfter"}
        spec.components.response(name, response)
    if state.own_users:
        spec.components.security_scheme("bearerAuth", {"type": "http", "scheme": "bearer"})
    cookie = app.config.get("SESSION_COOKIE_NAME") or "session"
    spec.components.security_scheme("sessionCookie", {"type": "apiKey", "in": "cookie", "name": cookie})
    spec.components.security_scheme("streamTicket", {"type": "apiKey", "in": "query", "name": "ticket"})
    paths: dict[str, tuple[list[str], dict[str, t.Any]]] = {}
    for rule in app.url_map.iter_rules():
        if not rule.endpoint.startswith("streamapp_") or not under_prefix(rule.rule, state.url_prefix):
            continue
        name = rule.endpoint.rpartition(".")[2]
        op = OPERATIONS.get(rule.endpoint, Operation(name, 200, errors=()))
        variables, operations = paths.setdefault(openapi_path(rule.rule), ([], {}))
        variables.extend(v for v in (_RENAMED.get(a, a) for a in rule.arguments) if v not in variables)
        for method in sorted((rule.methods or set()) - {"HEAD", "OPTIONS"}):
            operations[method.lower()] = _operation(plugin, name, op, state.own_users)
    for path, (variables, operations) in sorted(paths.items()):
        spec.path(path=path, operations=operations, parameters=[_path_parameter(v) for v in variables])
    doc = spec.to_dict()
    _refine(doc)
    return doc


@bp.get("/openapi.json")
def openapi_document() -> Response:
    """The document, without authentication: it describes the public API and holds no secret."""
    app = current_app._get_current_object()  # type: ignore[attr-defined]
    body = app.extensions.get(DOCUMENT_KEY)
    if body is None:
        body = app.extensions[DOCUMENT_KEY] = json.dumps(build_document(app), sort_keys=True).encode()
    return Response(body, mimetype="application/json", headers={"Cache-Control": CACHE_CONTROL})
