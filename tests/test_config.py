"""Settings from the environment: defaults, each variable's rule, one gathered error (SPEC §9)."""

from __future__ import annotations

import dataclasses

import pytest

from streamapp.config import ConfigError
from streamapp.config import Settings
from streamapp.config import load_settings
from streamapp.config import log_format
from streamapp.config import variables

DEV = {"STREAMAPP_ENV": "development"}
KEY = "k" * 16


def _error(environ: dict[str, str], **kw) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load_settings(environ, **kw)
    return info.value


def test_defaults():
    settings = load_settings(DEV)
    assert settings == Settings(env="development")
    assert (settings.heartbeat_s, settings.retry_ms, settings.stream_lifetime_s) == (15.0, 3000, 600.0)
    assert (settings.ticket_ttl_s, settings.cors_origins, settings.poll_ms) == (60, (), 500)
    assert settings.max_body_bytes == 4 * 1024 * 1024
    assert settings.max_event_bytes == 256 * 1024
    assert settings.max_json_depth == 64
    assert settings.database_url is None and settings.secret_key is None
    assert (settings.login_max_failures, settings.login_max_address_failures) == (5, 20)
    assert (settings.login_window_s, settings.proxy_hops) == (900, 0)


def test_production_is_the_default_env():
    settings = load_settings({"SECRET_KEY": KEY})
    assert settings.env == "production" and not settings.development


def test_empty_value_counts_as_unset():
    assert load_settings({**DEV, "STREAMAPP_RETRY_MS": ""}).retry_ms == 3000


#: (variable, raw value, field, parsed value) — one valid setting per variable.
VALID = [
    ("DATABASE_URL", "postgresql://u@h/db", "database_url", "postgresql://u@h/db"),
    ("STREAMAPP_LISTEN_DATABASE_URL", "host=h dbname=db", "listen_database_url", "host=h dbname=db"),
    ("SECRET_KEY", "s" * 16, "secret_key", "s" * 16),
    ("STREAMAPP_ENV", "development", "env", "development"),
    ("STREAMAPP_HEARTBEAT_S", "0.5", "heartbeat_s", 0.5),
    ("STREAMAPP_RETRY_MS", "0", "retry_ms", 0),
    ("STREAMAPP_STREAM_LIFETIME_S", "30", "stream_lifetime_s", 30.0),
    ("STREAMAPP_MAX_STREAMS_PER_WORKER", "1", "max_streams_per_worker", 1),
    ("STREAMAPP_MAX_STREAMS_PER_USER", "5", "max_streams_per_user", 5),
    ("STREAMAPP_TICKET_TTL_S", "3600", "ticket_ttl_s", 3600),
    ("STREAMAPP_MAX_IDS_PER_STREAM", "1", "max_ids_per_stream", 1),
    (
        "STREAMAPP_CORS_ORIGINS",
        " https://a.example.com/ , http://localhost:3000,",
        "cors_origins",
        ("https://a.example.com", "http://localhost:3000"),
    ),
    ("STREAMAPP_MAX_BODY_BYTES", "1024", "max_body_bytes", 1024),
    ("STREAMAPP_MAX_EVENT_BYTES", "256", "max_event_bytes", 256),
    ("STREAMAPP_MAX_JSON_DEPTH", "100", "max_json_depth", 100),
    ("STREAMAPP_REDACT_KEYS", "ssn, pin ,", "redact_keys", ("ssn", "pin")),
    ("STREAMAPP_LOGIN_MAX_FAILURES", "3", "login_max_failures", 3),
    ("STREAMAPP_LOGIN_MAX_ADDRESS_FAILURES", "100", "login_max_address_failures", 100),
    ("STREAMAPP_LOGIN_WINDOW_S", "60", "login_window_s", 60),
    ("STREAMAPP_PROXY_HOPS", "1", "proxy_hops", 1),
    ("STREAMAPP_POOL_SIZE", "100", "pool_size", 100),
    ("STREAMAPP_POLL_MS", "250", "poll_ms", 250),
    ("STREAMAPP_NOTIFY", "off", "notify", False),
    ("STREAMAPP_DIRECT_WRITES", "false", "direct_writes", False),
    ("STREAMAPP_SEND_TIMEOUT_S", "2.5", "send_timeout_s", 2.5),
    ("STREAMAPP_MAX_CONCURRENT_REPLAYS", "10000", "max_concurrent_replays", 10000),
    ("STREAMAPP_RECENT_FRAMES_BYTES", "0", "recent_frames_bytes", 0),
    ("STREAMAPP_VAR_DIR", "/tmp/sa", "var_dir", "/tmp/sa"),
    ("STREAMAPP_EXECUTION_TIMEOUT_S", "3600", "execution_timeout_s", 3600.0),
    ("STREAMAPP_RETENTION_S", "604800", "retention_s", 604800.0),
    ("STREAMAPP_LOG_FORMAT", "json", "log_format", "json"),
]


#: Other libraries' variables that streamapp reads too, and the field each fills.
FOREIGN = {"PROMETHEUS_MULTIPROC_DIR": "metrics_dir"}


@pytest.mark.parametrize("name, raw, field, value", VALID)
def test_each_variable_sets_its_field(name, raw, field, value):
    assert getattr(load_settings({**DEV, name: raw}, check=False), field) == value


def test_variables_lists_every_variable():
    assert sorted(n for n in variables() if n not in FOREIGN) == sorted(row[0] for row in VALID)


def test_variables_cover_every_setting():
    fields = {f.name for f in dataclasses.fields(Settings)} - set(FOREIGN.values())
    assert {row[2] for row in VALID} == fields


@pytest.mark.parametrize(
    "name",
    [
        "DATABASE_URL",
        "STREAMAPP_LISTEN_DATABASE_URL",
        "SECRET_KEY",
        "STREAMAPP_ENV",
        "STREAMAPP_HEARTBEAT_S",
        "STREAMAPP_RETRY_MS",
        "STREAMAPP_STREAM_LIFETIME_S",
        "STREAMAPP_MAX_STREAMS_PER_WORKER",
        "STREAMAPP_MAX_STREAMS_PER_USER",
        "STREAMAPP_TICKET_TTL_S",
        "STREAMAPP_CORS_ORIGINS",
        "STREAMAPP_MAX_BODY_BYTES",
        "STREAMAPP_MAX_EVENT_BYTES",
        "STREAMAPP_REDACT_KEYS",
    ],
)
def test_spec_names_are_read(name):
    assert name in variables()


def test_other_names_are_prefixed():
    fixed = {"DATABASE_URL", "SECRET_KEY", *FOREIGN}
    assert all(n in fixed or n.startswith("STREAMAPP_") for n in variables())


ORIGINS_RULE = "must be comma-separated origins like https://app.example.com"


@pytest.mark.parametrize(
    "name, raw, rule",
    [
        ("DATABASE_URL", "mysql://u@h/db", "must be a postgresql:// URL or a libpq key=value string"),
        ("STREAMAPP_LISTEN_DATABASE_URL", "localhost", "must be a postgresql:// URL or a libpq key=value string"),
        ("SECRET_KEY", "s" * 15, "must be at least 16 characters"),
        ("STREAMAPP_ENV", "staging", "must be one of production, development"),
        ("STREAMAPP_ENV", "Development", "must be one of production, development"),
        ("STREAMAPP_HEARTBEAT_S", "0", "must be a number greater than 0"),
        ("STREAMAPP_HEARTBEAT_S", "-1", "must be a number greater than 0"),
        ("STREAMAPP_HEARTBEAT_S", "soon", "must be a number greater than 0"),
        ("STREAMAPP_HEARTBEAT_S", "nan", "must be a number greater than 0"),
        ("STREAMAPP_STREAM_LIFETIME_S", "inf", "must be a number greater than 0"),
        ("STREAMAPP_SEND_TIMEOUT_S", "0", "must be a number greater than 0"),
        ("STREAMAPP_EXECUTION_TIMEOUT_S", "0", "must be a number greater than 0"),
        ("STREAMAPP_RETENTION_S", "7d", "must be a number greater than 0"),
        ("STREAMAPP_LOG_FORMAT", "JSON", "must be one of text, json"),
        ("STREAMAPP_RETRY_MS", "-1", "must be between 0 and 600000"),
        ("STREAMAPP_RETRY_MS", "600001", "must be between 0 and 600000"),
        ("STREAMAPP_RETRY_MS", "1.5", "must be an integer"),
        ("STREAMAPP_MAX_STREAMS_PER_WORKER", "0", "must be at least 1"),
        ("STREAMAPP_MAX_STREAMS_PER_USER", "many", "must be an integer"),
        ("STREAMAPP_TICKET_TTL_S", "0", "must be between 1 and 3600"),
        ("STREAMAPP_MAX_IDS_PER_STREAM", "0", "must be between 1 and 100"),
        ("STREAMAPP_MAX_IDS_PER_STREAM", "101", "must be between 1 and 100"),
        ("STREAMAPP_TICKET_TTL_S", "3601", "must be between 1 and 3600"),
        ("STREAMAPP_CORS_ORIGINS", "*", ORIGINS_RULE),
        ("STREAMAPP_CORS_ORIGINS", "https://a.example.com/app", ORIGINS_RULE),
        ("STREAMAPP_CORS_ORIGINS", "ftp://a.example.com", ORIGINS_RULE),
        ("STREAMAPP_CORS_ORIGINS", "https://", ORIGINS_RULE),
        ("STREAMAPP_CORS_ORIGINS", "https://a.example.com?x=1", ORIGINS_RULE),
        ("STREAMAPP_MAX_BODY_BYTES", "1023", "must be at least 1024"),
        ("STREAMAPP_MAX_EVENT_BYTES", "255", "must be at least 256"),
        ("STREAMAPP_MAX_JSON_DEPTH", "7", "must be between 8 and 100"),
        ("STREAMAPP_MAX_JSON_DEPTH", "101", "must be between 8 and 100"),
        ("STREAMAPP_MAX_JSON_DEPTH", "deep", "must be an integer"),
        ("STREAMAPP_POOL_SIZE", "101", "must be between 1 and 100"),
        ("STREAMAPP_POLL_MS", "249", "must be between 250 and 2000"),
        ("STREAMAPP_POLL_MS", "2001", "must be between 250 and 2000"),
        ("STREAMAPP_NOTIFY", "maybe", "must be one of 1, 0, true, false, yes, no, on, off"),
        ("STREAMAPP_MAX_CONCURRENT_REPLAYS", "0", "must be between 1 and 10000"),
        ("STREAMAPP_RECENT_FRAMES_BYTES", "-1", "must be between 0 and 16777216"),
        ("STREAMAPP_RECENT_FRAMES_BYTES", "16777217", "must be between 0 and 16777216"),
        ("STREAMAPP_REDACT_KEYS", "ssn,--", "must be comma-separated key patterns, each with a letter or digit"),
        ("STREAMAPP_LOGIN_MAX_FAILURES", "0", "must be between 1 and 1000"),
        ("STREAMAPP_LOGIN_MAX_ADDRESS_FAILURES", "0", "must be between 1 and 100000"),
        ("STREAMAPP_LOGIN_WINDOW_S", "86401", "must be between 1 and 86400"),
        ("STREAMAPP_PROXY_HOPS", "-1", "must be between 0 and 10"),
    ],
)
def test_rule_is_named_with_its_variable(name, raw, rule):
    error = _error({**DEV, "SECRET_KEY": KEY, name: raw})
    assert error.problems == [f"{name} {rule}"]
    assert f"{name} {rule}" in str(error)


def test_bad_values_are_gathered_into_one_error():
    error = _error(
        {
            **DEV,
            "STREAMAPP_HEARTBEAT_S": "0",
            "STREAMAPP_POLL_MS": "1",
            "STREAMAPP_ENV": "qa",
            "DATABASE_URL": "sqlite://x",
        }
    )
    named = {p.split()[0] for p in error.problems}
    assert named == {"STREAMAPP_HEARTBEAT_S", "STREAMAPP_POLL_MS", "STREAMAPP_ENV", "DATABASE_URL", "SECRET_KEY"}
    for name in named:
        assert name in str(error)


MARK = "Zq9hunter2Xw"


@pytest.mark.parametrize(
    "name, raw",
    [
        ("SECRET_KEY", MARK),
        ("DATABASE_URL", f"mysql://admin:{MARK}@db.example.com/app"),
        ("STREAMAPP_LISTEN_DATABASE_URL", f"//admin:{MARK}@db"),
        ("STREAMAPP_HEARTBEAT_S", MARK),
        ("STREAMAPP_STREAM_LIFETIME_S", MARK),
        ("STREAMAPP_RETRY_MS", MARK),
        ("STREAMAPP_ENV", MARK),
        ("STREAMAPP_CORS_ORIGINS", MARK),
        ("STREAMAPP_NOTIFY", MARK),
        ("STREAMAPP_POOL_SIZE", MARK),
    ],
)
def test_message_never_repeats_the_value(name, raw):
    error = _error({name: raw})
    assert name in str(error)
    assert MARK not in str(error) and all(MARK not in p for p in error.problems)


def test_secret_key_required_outside_development():
    error = _error({})
    assert error.problems == ["SECRET_KEY is required unless STREAMAPP_ENV=development"]


def test_secret_key_optional_in_development():
    assert load_settings(DEV).secret_key is None


def test_heartbeat_must_be_shorter_than_lifetime():
    error = _error({**DEV, "STREAMAPP_HEARTBEAT_S": "30", "STREAMAPP_STREAM_LIFETIME_S": "30"})
    assert error.problems == ["STREAMAPP_HEARTBEAT_S must be smaller than STREAMAPP_STREAM_LIFETIME_S"]


def test_event_limit_must_fit_in_body_limit():
    error = _error({**DEV, "STREAMAPP_MAX_BODY_BYTES": "2048", "STREAMAPP_MAX_EVENT_BYTES": "4096"})
    assert error.problems == ["STREAMAPP_MAX_EVENT_BYTES must not exceed STREAMAPP_MAX_BODY_BYTES"]


def test_check_false_skips_cross_checks():
    settings = load_settings({"STREAMAPP_HEARTBEAT_S": "900"}, check=False)
    assert settings.heartbeat_s == 900.0 and settings.secret_key is None


def test_check_false_still_parses_values():
    error = _error({"STREAMAPP_POLL_MS": "10"}, check=False)
    assert error.problems == ["STREAMAPP_POLL_MS must be between 250 and 2000"]


def test_defaults_fill_what_the_environment_leaves_unset():
    settings = load_settings({"STREAMAPP_RETRY_MS": "100"}, defaults={"env": "development", "retry_ms": 5})
    assert (settings.env, settings.retry_ms) == ("development", 100)


def test_defaults_satisfy_the_cross_checks():
    settings = load_settings({}, defaults={"secret_key": KEY})
    assert settings.secret_key == KEY and settings.env == "production"


def test_overrides_win_over_the_environment():
    settings = load_settings({**DEV, "STREAMAPP_RETRY_MS": "100"}, retry_ms=7)
    assert settings.retry_ms == 7


def test_overrides_are_cross_checked():
    error = _error(DEV, heartbeat_s=700.0)
    assert error.problems == ["STREAMAPP_HEARTBEAT_S must be smaller than STREAMAPP_STREAM_LIFETIME_S"]


def test_reads_os_environ_by_default(monkeypatch):
    monkeypatch.setenv("STREAMAPP_ENV", "development")
    monkeypatch.setenv("STREAMAPP_RETRY_MS", "1234")
    assert load_settings().retry_ms == 1234


def test_settings_are_frozen():
    settings = load_settings(DEV)
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.retry_ms = 1  # type: ignore[misc]


def test_replace_returns_a_changed_copy():
    settings = load_settings(DEV)
    changed = settings.replace(max_body_bytes=2048)
    assert (changed.max_body_bytes, settings.max_body_bytes) == (2048, 4 * 1024 * 1024)


@pytest.mark.parametrize(
    "database_url, listen_url, expected",
    [
        ("postgresql://pooler/db", None, "postgresql://pooler/db"),
        ("postgresql://pooler/db", "postgresql://direct/db", "postgresql://direct/db"),
    ],
)
def test_listen_url_defaults_to_database_url(database_url, listen_url, expected):
    environ = {**DEV, "DATABASE_URL": database_url}
    if listen_url:
        environ["STREAMAPP_LISTEN_DATABASE_URL"] = listen_url
    assert load_settings(environ).listen_url == expected


@pytest.mark.parametrize(
    "raw, expected", [(None, "text"), ("", "text"), ("json", "json"), ("text", "text"), ("yaml", "text")]
)
def test_log_format_alone_for_gunicorns_logger(raw, expected):
    """gunicorn's logger reads it before the app loads; a bad value is the app's to refuse (load_settings)."""
    assert log_format({} if raw is None else {"STREAMAPP_LOG_FORMAT": raw}) == expected
