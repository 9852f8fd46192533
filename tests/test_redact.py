"""Redaction of event data and text (SPEC §7): tables of input and exact output."""

from __future__ import annotations

import copy
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from streamapp.redact import MAX_HOLD
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
    # SPEC §7 names these too (issue 11)
    "passphrase",
    "SSH_PASSPHRASE",
    "pass",
    "PASS",
    "db_pass",
    "smtpPass",
    "pwd",
    "db_pwd",
    "userPwd",
    "session",
    "SESSION",
    "session_id",
    "sessionId",
    "X-Session-Id",
    "user_session",
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
    "message",
    # near misses of pass and session: other words, or not the key's last word
    "passage",
    "passenger",
    "passed",
    "passes",
    "bypass",
    "compass",
    "pass_rate",
    "pass_count",
    "passThrough",
    "possession",
    "sessions",
    "session_count",
    "keyboard",
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
    (
        "botocore.exceptions.NoCredentialsError: Unable to locate credentials",
        "botocore.exceptions.NoCredentialsError: Unable to locate credentials",
    ),
    ("InvalidTokenError: signature has expired", "InvalidTokenError: signature has expired"),
    ("Status: RUNNING", "Status: RUNNING"),
    # PEM private keys: the whole block, whatever the key type
    (f"key:\n-----BEGIN PRIVATE KEY-----\n{PEM_BODY}\n-----END PRIVATE KEY-----\nok", f"key:\n{R}\nok"),
    (f"-----BEGIN RSA PRIVATE KEY-----\n{PEM_BODY}\n-----END RSA PRIVATE KEY-----", R),
    (f"a -----BEGIN OPENSSH PRIVATE KEY-----\\n{PEM_BODY}\\n-----END OPENSSH PRIVATE KEY-----\\n b", f"a {R}\\n b"),
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


# Well-known credential formats in prose (SPEC §7, issue 11). Fake values in the real shapes.
AWS_KEY_ID = "AKIAIOSFODNN7EXAMPLE"
AWS_SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
JWT = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U"
FORMATS = {
    "AWS access key id": AWS_KEY_ID,
    "AWS temporary key id": "ASIAY34FZKBOKMUTVV7A",
    "JWT": JWT,
    "JWT without a signature": "eyJhbGciOiJub25lIn0.eyJzdWIiOiIxIn0.",
    "OpenAI key": "sk-" + "Ab3dEf6hIj9kLm2nOp5qRs8tUv1wXy4zAb3dEf6h",
    "OpenAI project key": "sk-proj-" + "Ab3dEf6hIj9kLm2nOp5q_Rs8tUv1wXy4z-Ab3dEf",
    "Anthropic key": "sk-ant-api03-" + "abcDEF123456789_ghiJKL-mnoPQR",
    "GitHub personal token": "ghp_" + ("1a2B3c4D5e6F7g8H9i0J" * 2)[:36],
    "GitHub OAuth token": "gho_" + "A1b2C3d4E5f6G7h8I9j0" * 2,
    "GitHub app token": "ghs_" + "Zz9Yy8Xx7Ww6Vv5Uu4Tt3Ss2Rr1Qq0Pp9Oo8",
    "GitHub fine-grained token": "github_pat_11ABCDEFG0123456789_abcdefghijklmnopqrstuvwxyzABCDEFGH",
    "Slack bot token": "xoxb-123456789012-1234567890123-AbCdEfGhIjKlMnOpQrStUvWx",
    "Slack user token": "xoxp-123456789012-123456789012-123456789012-abcdef0123456789",
    "Slack app token": "xapp-1-A0123456789-0123456789012-abcdef0123456789",
    "Stripe secret key": "sk_live_" + "4eC39HqLyjWDarjtT1zdp7dc",
    "Stripe restricted key": "rk_live_" + "51H8abcDEFghiJKLmnoPQR",
    "Stripe test key": "sk_test_" + "4eC39HqLyjWDarjtT1zdp7dc",
    "Google API key": "AIza" + "SyD-1234567890abcdefghijklmnopqrstu",
    "Hugging Face token": "hf_" + "aBcDeFgHiJkLmNoPqRsTuVwXyZ0123456789",
    "GitLab token": "glpat-" + "xYz123AbC456dEf789gH",
    "npm token": "npm_" + "aBcDeFgHiJkLmNoPqRsTuVwXyZ0123456789",
    "SendGrid key": "SG." + "aBcDeFgHiJkLmNoPqRsTuV.wXyZ0123456789aBcDeFgHiJkLmNoPqRsTuVwXyZ01234",
}


@pytest.mark.parametrize("secret", FORMATS.values(), ids=FORMATS.keys())
def test_well_known_formats_in_prose(redactor, secret):
    text = f"I used {secret} for the call, then ({secret}), then key={secret}\n"
    assert redactor.redact_text(text) == f"I used {R} for the call, then ({R}), then key={R}\n"
    assert redactor.redact({"note": secret, "items": [f"'{secret}'"]}) == {"note": R, "items": [f"'{R}'"]}


def test_an_aws_secret_is_caught_beside_its_key_id(redactor):
    csv = f"Access key ID,Secret access key\n{AWS_KEY_ID},{AWS_SECRET}\n"
    assert redactor.redact_text(csv) == f"Access key ID,Secret access key\n{R},{R}\n"
    shell = f"aws configure set aws_access_key_id {AWS_KEY_ID} && aws configure set aws_secret_access_key {AWS_SECRET}"
    assert AWS_SECRET not in redactor.redact_text(shell)
    # Under a key that names it, the secret goes wherever it is.
    assert redactor.redact({"SecretAccessKey": AWS_SECRET}) == {"SecretAccessKey": R}
    assert redactor.redact_text(f"AWS_SECRET_ACCESS_KEY = {AWS_SECRET}") == f"AWS_SECRET_ACCESS_KEY = {R}"


NOT_SECRETS = [
    # prefixes inside longer words, or bodies too short or of the wrong shape
    "task-abcdefghijklmnopqrstuvwxyz123 and risk-free desk-0123456789abcdefghijkl",
    "pip install scikit-learn; the sk-learn alias; sk-12345",
    "akiaiosfodnn7example is lower case; AKIAIOSFODNN7EXAMPLEX is one too long",
    "eyJhbGciOiJIUzI1NiJ9 alone is only a JWT header",
    "the ghp_ prefix, xoxb-short, hf_abc, npm_123, glpat-short, SG.a.b",
    "pk_live_4eC39HqLyjWDarjtT1zdp7dc is a publishable key",
    # a 40-character hash with no access key id in sight
    "commit 3f786850e387550fdab836ed7d6dc881de23001b and ABCDEFGHIJabcdefghij0123456789ABCDEFGHIJ",
    "sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
    "550e8400-e29b-41d4-a716-446655440000",
    # ordinary words near the key names
    "a passage about the tokenizer, a passenger who passed, in this session we bypass the compass",
    "5 passed, 1 failed; pass rate 83%; sessions: 4; tokens: 1200",
    "a == b, x = 1, tokens = 5, max_tokens = 100",
    "password =",
    "password = \nnext line",
]


@pytest.mark.parametrize("text", NOT_SECRETS)
def test_what_is_not_a_secret_stays(redactor, text):
    assert redactor.redact_text(text) == text


KEY_FORMS = [
    # key = "value", with spaces around =, == or =>: code and config files
    ('password = "hunter2"', f'password = "{R}"'),
    ("PASSWORD = hunter2", f"PASSWORD = {R}"),
    ("api_key = 'abc' # set me", f"api_key = '{R}' # set me"),
    ("db_password\t=\thunter2", f"db_password\t=\t{R}"),
    ('if token == "abc":', f'if token == "{R}":'),
    ('{:password => "x"}', f'{{:password => "{R}"}}'),
    ("export DB_PASS=hunter2", f"export DB_PASS={R}"),
    ("pwd=hunter2&user=bob", f"pwd={R}&user=bob"),
    ("session=abc; Path=/", f"session={R}; Path=/"),
    # key: value lines and quoted pairs with the new names
    ("passphrase: correct horse battery staple", f"passphrase: {R}"),
    ("X-Session-Id: abc123\r\nAccept: */*", f"X-Session-Id: {R}\r\nAccept: */*"),
    ('{"pass": "hunter2", "passed": 3}', f'{{"pass": "{R}", "passed": 3}}'),
    ("SMTP_PASS: hunter2", f"SMTP_PASS: {R}"),
]


@pytest.mark.parametrize(("text", "expected"), KEY_FORMS)
def test_key_forms(redactor, text, expected):
    assert redactor.redact_text(text) == expected
    assert redactor.redact_text(expected) == expected


def test_extra_keys_reach_every_form():
    redactor = Redactor(["tenant_code"])
    assert redactor.redact_text("tenant_code = 'abc'") == f"tenant_code = '{R}'"
    assert redactor.redact_text("tenant-code: abc") == f"tenant-code: {R}"
    assert redactor.redact({"TenantCode": 7}) == {"TenantCode": R}


# -- properties (Hypothesis) ------------------------------------------------------------------

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4),
    max_leaves=20,
)
# Pieces the rules look for, so random text meets them often and in odd orders.
FRAGMENTS = [
    "password",
    "Password",
    "api_key",
    "X-Api-Key",
    "token",
    "session",
    "pass",
    "secret",
    "Bearer",
    "basic",
    "Authorization",
    "=",
    "==",
    "=>",
    ":",
    ": ",
    " = ",
    '"',
    "'",
    " ",
    "\t",
    "\n",
    "\r\n",
    "\\n",
    "\\",
    "{",
    "}",
    "[",
    "]",
    ",",
    ";",
    "&",
    "@",
    "://",
    "https://u:",
    "sa_0123456789ab_",
    "-----BEGIN PRIVATE KEY-----",
    "-----END PRIVATE KEY-----",
    "-----BEGIN ",
    "PRIVATE KEY",
    "AKIA",
    "IOSFODNN7EXAMPLE",
    AWS_SECRET,
    "eyJ",
    JWT,
    "sk-",
    "proj-",
    "ghp_",
    "xoxb-",
    "AIza",
    "0123456789",
    "abcdefghij",
    "ABCDEFGHIJ",
    "[REDACTED]",
    "Error",
]
TEXT = st.lists(st.sampled_from(FRAGMENTS) | st.text(max_size=4), max_size=24).map("".join)


@given(value=JSON)
def test_any_json_is_redacted_without_raising_and_stays_json(value):
    out = Redactor().redact(value)
    assert json.loads(json.dumps(out)) == out
    assert type(out) is type(value)


@given(text=TEXT | st.text())
def test_redacting_text_twice_changes_nothing(text):
    redactor = Redactor()
    once = redactor.redact_text(text)
    assert redactor.redact_text(once) == once


@given(value=JSON)
def test_redacting_json_twice_changes_nothing(value):
    redactor = Redactor()
    once = redactor.redact(value)
    assert redactor.redact(once) == once


# Planted secrets: "Q" never occurs in the text around them, so the secret can only
# survive where it was planted.
SECRET = st.text(alphabet="Qabcxyz0189-_.+", min_size=6, max_size=24).map(lambda s: "Q" + s)
# The text around a planted secret: the rules' fragments, but no whole credential.
PROSE = st.lists(
    st.sampled_from([w for w in FRAGMENTS if w not in (JWT, AWS_SECRET)]) | st.text(alphabet="abc ,.\n", max_size=6),
    max_size=12,
).map("".join)
PLANTED = [
    "password={}",
    'password = "{}"',
    "api_key: {}",
    '{{"client_secret": "{}"}}',
    "Authorization: Bearer {}",
    "Bearer {}",
    "postgres://bob:{}@db/app",
    "X-Session-Id: {}",
    "db_pass = '{}'",
    '{{"api_key":"{}","n":1}}',
    "Cookie: a={}; b=2",
    "-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----",
]


@given(before=PROSE, after=PROSE, secret=SECRET, form=st.sampled_from(PLANTED))
def test_a_planted_secret_never_survives(before, after, secret, form):
    text = f"{before}\n{form.format(secret)} \n{after}"
    assert secret not in Redactor().redact_text(text)
    assert secret not in json.dumps(Redactor().redact({"log": [text]}))


def _stream(redactor: Redactor, writes: list[str]) -> str:
    """What a ChunkPublisher sends when a flush comes after every write: redacted pieces, tails held."""
    sent, held = [], ""
    for piece in writes:
        text = held + piece
        cut = redactor.hold_from(text)
        sent.append(redactor.redact_text(text[:cut]))
        held = text[cut:]
    sent.append(redactor.redact_text(held))
    return "".join(sent)


CREDENTIALS = [v for v in FORMATS.values()]


@given(
    before=PROSE,
    after=PROSE,
    secret=SECRET,
    form=st.sampled_from(PLANTED + ["{}"]),
    credential=st.sampled_from(CREDENTIALS),
    cuts=st.lists(st.integers(min_value=0, max_value=400), max_size=8),
)
def test_a_secret_cut_across_writes_never_survives(before, after, secret, form, credential, cuts):
    planted = form.format(secret if form != "{}" else credential)
    text = f"{before} {planted} \n{after}"
    points = sorted({c % (len(text) + 1) for c in cuts})
    writes = [text[a:b] for a, b in zip([0, *points], [*points, len(text)], strict=True)]
    out = _stream(Redactor(), writes)
    assert (secret if form != "{}" else credential) not in out


def test_holding_back_never_delays_ordinary_text_past_its_last_word(redactor):
    assert redactor.hold_from("plain words and more ") == len("plain words and more ")
    assert redactor.hold_from("a line\n") == len("a line\n")
    text = "plain words and mo"
    assert text[redactor.hold_from(text) :] == "mo"
    assert redactor.hold_from('{"n":1,"msg":"hel') == len('{"n":1,"msg":')  # compact JSON: the last value
    # A run longer than any credential this module knows is sent as it is.
    assert redactor.hold_from("x" * (MAX_HOLD + 1)) == MAX_HOLD + 1
    assert redactor.hold_from("x" * MAX_HOLD) == 0


@pytest.mark.parametrize(
    ("text", "held"),
    [
        ("use password = ", "password = "),
        ('{"api_key": "abc d', '"api_key": "abc d'),
        ("send Bearer ", "Bearer "),
        ("Authorization: Bearer abc and more", "Authorization: Bearer abc and more"),
        ("conf\n-----BEGIN RSA PRIVATE KEY-----\nMIIabc\n", "-----BEGIN RSA PRIVATE KEY-----\nMIIabc\n"),
        ("conf\n-----BEGIN ", "-----BEGIN "),
        ("a postgres://bob:hun", "postgres://bob:hun"),
        ("key sk-proj-Ab3d", "sk-proj-Ab3d"),
        ('{"api_key": "abc def", ', ""),
        ("-----BEGIN RSA PRIVATE KEY-----\nabc\n-----END RSA PRIVATE KEY-----\n", ""),
    ],
)
def test_what_is_held_back(redactor, text, held):
    assert text[redactor.hold_from(text) :] == held
