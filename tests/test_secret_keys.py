"""secret_keys: which keys are secret, and where keys sit inside text (SPEC §7).

The rules themselves are held against the whole redactor in test_redact.py; these tests pin what
redact.py and holdback.py rely on: the predicate on its own, and the offsets the key finders give.
"""

from __future__ import annotations

import pytest

from streamapp.secret_keys import Key
from streamapp.secret_keys import SecretKeys
from streamapp.secret_keys import assignment_keys
from streamapp.secret_keys import line_keys
from streamapp.secret_keys import names_an_exception
from streamapp.secret_keys import normalize
from streamapp.secret_keys import quoted_keys


@pytest.mark.parametrize(
    ("key", "secret"),
    [
        ("X-Api-Key", True),
        ("db_password", True),
        ("CSRFToken", True),
        ("session_id", True),
        ("DB_PASS", True),
        ("prompt_tokens", False),
        ("token_usage", False),
        ("pass_rate", False),
        ("tenant", False),
    ],
)
def test_the_builtin_rules(key, secret):
    assert SecretKeys()(key) is secret


def test_extra_patterns_are_normalized_substrings():
    is_secret = SecretKeys(["X-Tenant"])
    assert is_secret.extra_keys == ("xtenant",)
    assert is_secret("old_x_tenant_id") and is_secret("XTenant") and not is_secret("tenant")


def test_an_extra_pattern_without_letters_or_digits_is_refused():
    with pytest.raises(ValueError, match="no letter or digit"):
        SecretKeys(["-_-"])


def test_normalize_and_exception_names():
    assert normalize("X-Api_Key.v2") == "xapikeyv2"
    assert names_an_exception("NoCredentialsError") and names_an_exception("auth_warning")
    assert not names_an_exception("credentials")


@pytest.mark.parametrize(
    ("finder", "text", "expected"),
    [
        (assignment_keys, "a password = 'x'", [Key(2, 13, "password", "")]),
        (assignment_keys, "k=>v", [Key(0, 3, "k", "")]),
        (line_keys, "Cookie: a=1", [Key(0, 7, "Cookie", "")]),
        (line_keys, "-H 'X-Api-Key: k'", [Key(4, 14, "X-Api-Key", "'")]),
        (quoted_keys, '{"api_key": "v"}', [Key(1, 12, "api_key", '"')]),
        (quoted_keys, "no pairs here", []),
    ],
)
def test_key_finders_give_where_the_pair_and_its_value_start(finder, text, expected):
    # A quoted key's pair starts at its opening quote.
    assert list(finder(text)) == expected
