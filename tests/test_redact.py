"""Redaction of event data and text (SPEC §7): tables of input and exact output."""

from __future__ import annotations

import copy
import json

import pytest

from streamapp.redact import REDACTED
from streamapp.redact import Redactor

R = REDACTED

SECRET_KEYS = [
    "password",
    "db_password",
    "DB_PASSWORD",
    "userPassword",
    "passwd",
    "secret",
    "client_secret",
    "AWS_SECRET_ACCESS_KEY",
    "token",
    "TOKEN",
    "access_token",
    "refresh_token",
    "id_token",
    "accessToken",
    "tokenValue",
    "token_type",
    "X-Auth-Token",
    "x-amz-security-token",
    "CSRFToken",
    "csrftoken",
    "api_key",
    "apikey",
    "api-key",
    "apiKey",
    "X-Api-Key",
    "authorization",
    "Authorization",
    "Proxy-Authorization",
    "cookie",
    "Cookie",
    "set-cookie",
    "Set-Cookie",
    "private_key",
    "privateKey",
    "private-key",
    "PRIVATE_KEY_ID",
    "credential",
    "credentials",
    "clientCredentials",
]

PLAIN_KEYS = [
    "prompt_tokens",
    "completion_tokens",
    "total_tokens",
    "max_tokens",
    "tokens_used",
    "input_tokens",
    "cache_read_input_tokens",
    "reasoning_tokens",
    "maxTokens",
    "promptTokenCount",
    "totalTokenCount",
    "token_usage",
    "token_count",
    "tokenCount",
    "max_token_limit",
    "tokenizer",
    "usage",
    "key",
    "name",
    "status",
    "task_id",
    "author",
    "session_id",
    "message",
]


@pytest.fixture
def redactor() -> Redactor:
    return Redactor()


@pytest.mark.parametrize("key", SECRET_KEYS)
def test_secret_keys(redactor, key):
    assert redactor.is_secret_key(key)
    assert redactor.redact({key: "hunter2"}) == {key: R}


@pytest.mark.parametrize("key", PLAIN_KEYS)
def test_plain_keys_survive(redactor, key):
    assert not redactor.is_secret_key(key)
    assert redactor.redact({key: 12}) == {key: 12}


@pytest.mark.parametrize("value", [12, 0, 1.5, True, False, None, "", "x", [], {}, ["a", 1], {"user": "bob"}])
def test_every_value_under_a_secret_key_is_redacted(redactor, value):
    assert redactor.redact({"password": value}) == {"password": R}


def test_llm_usage_survives_while_its_secrets_do_not(redactor):
    data = {
        "model": "gpt-4o",
        "usage": {
            "prompt_tokens": 12,
            "completion_tokens": 30,
            "total_tokens": 42,
            "prompt_tokens_details": {"cached_tokens": 0},
        },
        "usageMetadata": {"promptTokenCount": 12, "totalTokenCount": 42},
        "token_usage": {"input_tokens": 5, "output_tokens": 7},
        "request": {"headers": {"Authorization": "Bearer abc", "X-Api-Key": "k-1", "Accept": "*/*"}},
        "id_token": "eyJ.x.y",
    }
    assert redactor.redact(data) == {
        "model": "gpt-4o",
        "usage": {
            "prompt_tokens": 12,
            "completion_tokens": 30,
            "total_tokens": 42,
            "prompt_tokens_details": {"cached_tokens": 0},
        },
        "usageMetadata": {"promptTokenCount": 12, "totalTokenCount": 42},
        "token_usage": {"input_tokens": 5, "output_tokens": 7},
        "request": {"headers": {"Authorization": R, "X-Api-Key": R, "Accept": "*/*"}},
        "id_token": R,
    }


DEEP = {
    "type": "tool_call",
    "data": {
        "tool": "http",
        "args": [
            {"url": "https://api.example.com", "headers": [{"Cookie": "sid=1"}, {"accept": "json"}]},
            [{"deeper": [{"client_secret": {"nested": "x"}, "ok": "fine"}]}],
            "plain",
            7,
        ],
        "config": {"db": {"dsn": "postgres://app:s3cret@db:5432/app", "password": None}},
        "note": "called with Bearer abc.def-ghi",
    },
}

DEEP_REDACTED = {
    "type": "tool_call",
    "data": {
        "tool": "http",
        "args": [
            {"url": "https://api.example.com", "headers": [{"Cookie": R}, {"accept": "json"}]},
            [{"deeper": [{"client_secret": R, "ok": "fine"}]}],
            "plain",
            7,
        ],
        "config": {"db": {"dsn": f"postgres://app:{R}@db:5432/app", "password": R}},
        "note": f"called with Bearer {R}",
    },
}


def test_every_depth_and_lists(redactor):
    assert redactor.redact(DEEP) == DEEP_REDACTED


def test_the_input_is_never_modified(redactor):
    data = copy.deepcopy(DEEP)
    out = redactor.redact(data)
    assert data == DEEP
    assert out is not data
    assert out["data"] is not data["data"]
    assert out["data"]["args"] is not data["data"]["args"]
    out["data"]["args"].append("more")
    assert data == DEEP


def test_redacting_twice_changes_nothing(redactor):
    once = redactor.redact(DEEP)
    assert redactor.redact(once) == once


def test_the_instance_is_the_producers_callable(redactor):
    assert redactor(DEEP) == DEEP_REDACTED


def test_tuples_stay_tuples_and_other_scalars_pass(redactor):
    assert redactor.redact(("Bearer abc", 1)) == (f"Bearer {R}", 1)
    assert redactor.redact(3) == 3
    assert redactor.redact(None) is None
    assert redactor.redact({1: "one"}) == {1: "one"}


TEXT = [
    # nothing to do
    ("", ""),
    ("RUNNING", "RUNNING"),
    ("The quick brown fox.", "The quick brown fox."),
    # bearer credentials, any case, the scheme word kept
    ("Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.sig-_", f"Authorization: Bearer {R}"),
    ("bearer abc123", f"bearer {R}"),
    ("BEARER abc123 then more", f"BEARER {R} then more"),
    ("Bearer  mysecrettoken", f"Bearer  {R}"),
    ("token was Bearer abc123.", f"token was Bearer {R}."),
    ("a Bearer sa_0123456789ab_xyz", f"a Bearer {R}"),
    ("send a Bearer token in the header", "send a Bearer token in the header"),
    ("the bearer of bad news", "the bearer of bad news"),
    ("Bearer [REDACTED]", "Bearer [REDACTED]"),
    # basic credentials: base64-shaped and not a plain word
    ("Authorization: Basic dXNlcjpwYXNz", f"Authorization: Basic {R}"),
    ("basic YWRtaW46YWRtaW4=", f"basic {R}"),
    ("Basic YTpi, then", f"Basic {R}, then"),
    ("basic usage of Basic Auth", "basic usage of Basic Auth"),
    ("a basic well-known idea", "a basic well-known idea"),
    ("basic JavaScript and basic 101", "basic JavaScript and basic 101"),
    # URL passwords
    ("postgres://bob:hunter2@db.example.com:5432/app", f"postgres://bob:{R}@db.example.com:5432/app"),
    ("redis://:hunter2@localhost/0", f"redis://:{R}@localhost/0"),
    ("dsn postgres://bob:p@ss:w0rd@db/app ok", f"dsn postgres://bob:{R}@db/app ok"),
    ("see https://u:x@a.com and http://v:y@b.com", f"see https://u:{R}@a.com and http://v:{R}@b.com"),
    ("https://mastodon.social:443/@alice", "https://mastodon.social:443/@alice"),
    ("https://user@example.com/path", "https://user@example.com/path"),
    ("mail bob@example.com: hi", "mail bob@example.com: hi"),
    # our API tokens
    ("token sa_0123456789ab_AbC-def_ghi used", f"token {R} used"),
    ("sa_0123456789ab_x", R),
    ("visa_0123456789ab_x", "visa_0123456789ab_x"),
    ("sa_short_x", "sa_short_x"),
    # key=value pairs with a secret key
    ("GET /v1?api_key=abc123&max_tokens=5 failed", f"GET /v1?api_key={R}&max_tokens=5 failed"),
    ("host=db password=hunter2 user=bob", f"host=db password={R} user=bob"),
    ('--password="a b c" --user=x', f'--password="{R}" --user=x'),
    ("?access_token=abc.def&state=1", f"?access_token={R}&state=1"),
    ("prompt_tokens=12 token_count=3", "prompt_tokens=12 token_count=3"),
    ("a==b", "a==b"),
    ("password=", "password="),
    # quoted pairs: JSON or a Python repr in a message
    (
        '{"password": "x y", "prompt_tokens": 12, "token": 12345, "nested": {"secret": null}}',
        f'{{"password": "{R}", "prompt_tokens": 12, "token": "{R}", "nested": {{"secret": "{R}"}}}}',
    ),
    ("{'access_token': 'abc', 'user': 'bob'}", f"{{'access_token': '{R}', 'user': 'bob'}}"),
    ('{"pw": "a\\"b", "api-key":"k"}', f'{{"pw": "a\\"b", "api-key":"{R}"}}'),
    ('{"credentials": {"user": "bob"}}', '{"credentials": {"user": "bob"}}'),
    ("Note: it's 'fine'", "Note: it's 'fine'"),
]


@pytest.mark.parametrize(("text", "expected"), TEXT)
def test_redact_text(redactor, text, expected):
    assert redactor.redact_text(text) == expected
    assert redactor.redact_text(expected) == expected


@pytest.mark.parametrize(("text", "expected"), TEXT)
def test_strings_at_any_depth(redactor, text, expected):
    data = {"message": text, "items": [text, {"inner": [text]}]}
    assert redactor.redact(data) == {"message": expected, "items": [expected, {"inner": [expected]}]}


@pytest.mark.parametrize(
    ("secret", "scheme"),
    [
        ("sa_0123456789ab_Zm9vYmFyYmF6cXV4", "Bearer"),
        ("eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2lnbmF0dXJl", "Bearer"),
        ("hunter2-2024", "Bearer"),
        ("dXNlcjpodW50ZXIyMDI0", "Basic"),
    ],
)
def test_no_part_of_a_secret_survives(redactor, secret, scheme):
    data = {
        "headers": {"Authorization": f"{scheme} {secret}"},
        "error": f"401 for https://bob:{secret}@api.example.com?api_key={secret}",
        "log": [f"Authorization: {scheme} {secret}", f"curl -H 'Authorization: {scheme} {secret}'"],
        "body": json.dumps({"refresh_token": secret}),
        "db_password": secret,
    }
    out = json.dumps(redactor.redact(data))
    for i in range(0, len(secret) - 3):
        assert secret[i : i + 4] not in out


def test_extra_keys_are_case_insensitive_substrings_of_the_normalized_key():
    redactor = Redactor(["session_id", "X-Tenant"])
    for key in ("session_id", "sessionId", "SESSION-ID", "old_session_id", "x_tenant", "XTenantName"):
        assert redactor.is_secret_key(key), key
    assert redactor.redact({"sessionId": "abc", "tenant": "t", "password": "p"}) == {
        "sessionId": R,
        "tenant": "t",
        "password": R,
    }
    assert redactor.redact_text("GET /?session_id=abc&page=2") == f"GET /?session_id={R}&page=2"
    assert redactor.extra_keys == ("sessionid", "xtenant")


def test_extra_keys_leave_the_builtin_rules_alone():
    redactor = Redactor(["pin"])
    data = {"pin": 1234, "token": "t", "prompt_tokens": 3}
    assert redactor.redact(data) == {"pin": R, "token": R, "prompt_tokens": 3}
    assert not Redactor().is_secret_key("pin")


@pytest.mark.parametrize("pattern", ["", "-", "__", " . "])
def test_an_extra_key_without_letters_or_digits_is_refused(pattern):
    with pytest.raises(ValueError, match="no letter or digit"):
        Redactor([pattern])


CERTIFICATE = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----"
PEM_BODY = "MIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQC7\nVJTUt9Us8cKjMzEfYyjiWA4R4/M2bS1G"

LINES = [
    # unquoted "key: value" with a secret key: the value runs to the end of its line
    ("password: hunter2", f"password: {R}"),
    ("db:\n  password: hunter2\n  user: bob", f"db:\n  password: {R}\n  user: bob"),
    ("X-Api-Key: sk-live-abc", f"X-Api-Key: {R}"),
    ("X-Api-Key:\tsk-live-abc  \r\nAccept: */*", f"X-Api-Key:\t{R}  \r\nAccept: */*"),
    ("Cookie: sessionid=abc", f"Cookie: {R}"),
    ("Set-Cookie: csrftoken=abc; Path=/; HttpOnly", f"Set-Cookie: {R}"),
    ("client_secret: two words here", f"client_secret: {R}"),
    ("token: 12345", f"token: {R}"),
    ('password: "a b"', f'password: "{R}"'),
    # an authorization header keeps its scheme word, whatever the scheme
    ("Authorization: Token abc123", f"Authorization: Token {R}"),
    ("Proxy-Authorization: Digest username=bob, response=6629fae4", f"Proxy-Authorization: Digest {R}"),
    ("Authorization: Bearer abc then more", f"Authorization: Bearer {R}"),
    ("authorization: abc123", f"authorization: {R}"),
    # inside a quoted string the value ends at its closing quote, or at an escaped line end
    ("curl -H 'Authorization: Token abc' https://x", f"curl -H 'Authorization: Token {R}' https://x"),
    ('{"log": "X-Api-Key: k-1", "n": 1}', f'{{"log": "X-Api-Key: {R}", "n": 1}}'),
    ("headers: 'password: p\\nAccept: json'", f"headers: 'password: {R}\\nAccept: json'"),
    # near misses: no colon, no space after it, a key that is not secret, an exception's name
    ("password reset email sent", "password reset email sent"),
    ("tokens: 42", "tokens: 42"),
    ("max_tokens: 100, prompt_tokens: 12", "max_tokens: 100, prompt_tokens: 12"),
    ("token count: 5", "token count: 5"),
    ("https://secret.example.com:8443/path", "https://secret.example.com:8443/path"),
    ("password:", "password:"),
    ("password:   ", "password:   "),
    ("botocore.exceptions.NoCredentialsError: Unable to locate credentials",
     "botocore.exceptions.NoCredentialsError: Unable to locate credentials"),
    ("InvalidTokenError: signature has expired", "InvalidTokenError: signature has expired"),
    ("Status: RUNNING", "Status: RUNNING"),
    # PEM private keys: the whole block, whatever the key type
    (f"key:\n-----BEGIN PRIVATE KEY-----\n{PEM_BODY}\n-----END PRIVATE KEY-----\nok", f"key:\n{R}\nok"),
    (f"-----BEGIN RSA PRIVATE KEY-----\n{PEM_BODY}\n-----END RSA PRIVATE KEY-----", R),
    (f"a -----BEGIN OPENSSH PRIVATE KEY-----\\n{PEM_BODY}\\n-----END OPENSSH PRIVATE KEY-----\\n b",
     f"a {R}\\n b"),
    (f"-----BEGIN EC PRIVATE KEY-----\n{PEM_BODY}", R),  # cut off: redacted to the end
    (f"-----BEGIN PGP PRIVATE KEY BLOCK-----\n{PEM_BODY}\n-----END PGP PRIVATE KEY BLOCK-----", R),
    (CERTIFICATE, CERTIFICATE),
]


@pytest.mark.parametrize(("text", "expected"), LINES)
def test_unquoted_pairs_and_private_keys(redactor, text, expected):
    assert redactor.redact_text(text) == expected
    assert redactor.redact_text(expected) == expected


def test_no_part_of_a_private_key_survives(redactor):
    pem = f"-----BEGIN PRIVATE KEY-----\n{PEM_BODY}\n-----END PRIVATE KEY-----\n"
    out = json.dumps(redactor.redact({"config": {"tls": pem}, "log": [f"loaded {pem} from disk"]}))
    for line in PEM_BODY.splitlines():
        assert line[:8] not in out
    assert "PRIVATE KEY" not in out


def test_text_with_no_trigger_is_returned_as_it_is(redactor):
    text = "RUNNING-step-42"
    assert redactor.redact_text(text) is text
