"""Settings: the one place that reads the environment (SPEC §9).

Every variable has one parser with its rule. All problems are gathered and
raised together as one :class:`ConfigError`, naming each variable and the rule
it broke, never the value (it may be a secret).
"""

from __future__ import annotations

import dataclasses
import math
import os
import typing as t
from collections.abc import Callable
from collections.abc import Mapping
from urllib.parse import urlsplit

from .redact import Redactor

ENVIRONMENTS = ("production", "development")
#: ``STREAMAPP_LOG_FORMAT``: plain lines, or one JSON object per line (SPEC §9).
LOG_FORMATS = ("text", "json")


class ConfigError(Exception):
    """One or more configuration values are invalid; ``problems`` lists them."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("invalid configuration:\n" + "\n".join(f"  - {p}" for p in problems))


@dataclasses.dataclass(frozen=True)
class Settings:
    """Validated configuration of one streamapp instance."""

    database_url: str | None = None
    listen_database_url: str | None = None
    secret_key: str | None = None
    env: str = "production"
    heartbeat_s: float = 15.0
    retry_ms: int = 3000
    stream_lifetime_s: float = 600.0
    max_streams_per_worker: int = 12000
    max_streams_per_user: int = 100
    ticket_ttl_s: int = 60
    #: Executions one multiplexed stream may list (SPEC §5.6).
    max_ids_per_stream: int = 100
    cors_origins: tuple[str, ...] = ()
    max_body_bytes: int = 4 * 1024 * 1024
    max_event_bytes: int = 256 * 1024
    #: Objects and arrays a JSON body may nest (SPEC §2 "Robustness"); deeper → 422, never parsed.
    max_json_depth: int = 64
    redact_keys: tuple[str, ...] = ()
    login_max_failures: int = 5
    login_max_address_failures: int = 20
    login_window_s: int = 900
    proxy_hops: int = 0
    pool_size: int = 8
    poll_ms: int = 500
    notify: bool = True
    direct_writes: bool = True
    send_timeout_s: float = 30.0
    max_concurrent_replays: int = 32
    #: Bytes of each followed execution's newest frames a worker keeps, for replays without a read
    #: (a quarter of it per stream that follows the execution, up to all of it).
    recent_frames_bytes: int = 16 * 1024
    var_dir: str = "var"
    metrics_dir: str | None = None
    #: End executions with no durable event for this long with TIMED_OUT (SPEC §2); None: never.
    execution_timeout_s: float | None = None
    #: Prune events of executions that ended this long ago, in the background (SPEC §9); None: never.
    retention_s: float | None = None
    #: ``text`` or ``json``; gunicorn's logger reads it before the app loads (:func:`log_format`).
    log_format: str = "text"

    @property
    def development(self) -> bool:
        return self.env == "development"

    @property
    def listen_url(self) -> str | None:
        return self.listen_database_url or self.database_url

    def replace(self, **changes: t.Any) -> Settings:
        return dataclasses.replace(self, **changes)


def _positive_float(raw: str) -> float:
    # float()'s own message repeats the value; the rule is all the message may say.
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise ValueError("must be a number greater than 0")
    return value


def _int_range(low: int, high: int | None = None) -> Callable[[str], int]:
    def parse(raw: str) -> int:
        try:
            value = int(raw)
        except ValueError:
            raise ValueError("must be an integer") from None
        if value < low or (high is not None and value > high):
            bound = f"between {low} and {high}" if high is not None else f"at least {low}"
            raise ValueError(f"must be {bound}")
        return value

    return parse


def _choice(options: tuple[str, ...]) -> Callable[[str], str]:
    def parse(raw: str) -> str:
        if raw not in options:
            raise ValueError("must be one of " + ", ".join(options))
        return raw

    return parse


def _boolean(raw: str) -> bool:
    lowered = raw.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError("must be one of 1, 0, true, false, yes, no, on, off")


def _url(raw: str) -> str:
    if not raw.startswith(("postgres://", "postgresql://")) and "=" not in raw:
        raise ValueError("must be a postgresql:// URL or a libpq key=value string")
    return raw


def _origins(raw: str) -> tuple[str, ...]:
    origins = tuple(o.strip().rstrip("/") for o in raw.split(",") if o.strip())
    for origin in origins:
        parts = urlsplit(origin)
        bare = origin == f"{parts.scheme}://{parts.netloc}"  # no path, query or fragment
        if parts.scheme not in ("http", "https") or not parts.hostname or not bare:
            raise ValueError("must be comma-separated origins like https://app.example.com")
    return origins


def _words(raw: str) -> tuple[str, ...]:
    return tuple(w.strip() for w in raw.split(",") if w.strip())


def _key_patterns(raw: str) -> tuple[str, ...]:
    patterns = _words(raw)
    try:
        # The redactor's own rule: a pattern without a letter or digit would match every key.
        Redactor(patterns)
    except ValueError:
        raise ValueError("must be comma-separated key patterns, each with a letter or digit") from None
    return patterns


def _secret(raw: str) -> str:
    if len(raw) < 16:
        raise ValueError("must be at least 16 characters")
    return raw


def _seconds(raw: str) -> float:
    return _positive_float(raw)


#: variable name -> (Settings field, parser). The rule text comes from the parser's error.
_VARIABLES: dict[str, tuple[str, Callable[[str], t.Any]]] = {
    "DATABASE_URL": ("database_url", _url),
    "STREAMAPP_LISTEN_DATABASE_URL": ("listen_database_url", _url),
    "SECRET_KEY": ("secret_key", _secret),
    "STREAMAPP_ENV": ("env", _choice(ENVIRONMENTS)),
    "STREAMAPP_HEARTBEAT_S": ("heartbeat_s", _seconds),
    "STREAMAPP_RETRY_MS": ("retry_ms", _int_range(0, 600_000)),
    "STREAMAPP_STREAM_LIFETIME_S": ("stream_lifetime_s", _seconds),
    "STREAMAPP_MAX_STREAMS_PER_WORKER": ("max_streams_per_worker", _int_range(1)),
    "STREAMAPP_MAX_STREAMS_PER_USER": ("max_streams_per_user", _int_range(1)),
    "STREAMAPP_TICKET_TTL_S": ("ticket_ttl_s", _int_range(1, 3600)),
    # Above 100, a list of 64-character ids outgrows gunicorn's longest request line (8190 bytes)
    # and its cursor token the 1,024 characters SPEC §5.6 allows.
    "STREAMAPP_MAX_IDS_PER_STREAM": ("max_ids_per_stream", _int_range(1, 100)),
    "STREAMAPP_CORS_ORIGINS": ("cors_origins", _origins),
    "STREAMAPP_MAX_BODY_BYTES": ("max_body_bytes", _int_range(1024)),
    "STREAMAPP_MAX_EVENT_BYTES": ("max_event_bytes", _int_range(256)),
    # Below 8 an ordinary event batch does not fit; above 100 the recursive checks that
    # come after parsing (JSON Schema validation above all) could run out of stack.
    "STREAMAPP_MAX_JSON_DEPTH": ("max_json_depth", _int_range(8, 100)),
    "STREAMAPP_REDACT_KEYS": ("redact_keys", _key_patterns),
    "STREAMAPP_LOGIN_MAX_FAILURES": ("login_max_failures", _int_range(1, 1000)),
    "STREAMAPP_LOGIN_MAX_ADDRESS_FAILURES": ("login_max_address_failures", _int_range(1, 100_000)),
    "STREAMAPP_LOGIN_WINDOW_S": ("login_window_s", _int_range(1, 86_400)),
    "STREAMAPP_PROXY_HOPS": ("proxy_hops", _int_range(0, 10)),
    "STREAMAPP_POOL_SIZE": ("pool_size", _int_range(1, 100)),
    "STREAMAPP_POLL_MS": ("poll_ms", _int_range(250, 2000)),
    "STREAMAPP_NOTIFY": ("notify", _boolean),
    "STREAMAPP_DIRECT_WRITES": ("direct_writes", _boolean),
    "STREAMAPP_SEND_TIMEOUT_S": ("send_timeout_s", _seconds),
    "STREAMAPP_MAX_CONCURRENT_REPLAYS": ("max_concurrent_replays", _int_range(1, 10_000)),
    "STREAMAPP_RECENT_FRAMES_BYTES": ("recent_frames_bytes", _int_range(0, 16 * 1024 * 1024)),
    "STREAMAPP_VAR_DIR": ("var_dir", str),
    "STREAMAPP_EXECUTION_TIMEOUT_S": ("execution_timeout_s", _seconds),
    "STREAMAPP_RETENTION_S": ("retention_s", _seconds),
    "STREAMAPP_LOG_FORMAT": ("log_format", _choice(LOG_FORMATS)),
    # prometheus-client's own variable: where gunicorn workers share their metrics.
    "PROMETHEUS_MULTIPROC_DIR": ("metrics_dir", str),
}


def load_settings(
    environ: Mapping[str, str] | None = None,
    *,
    defaults: Mapping[str, t.Any] | None = None,
    check: bool = True,
    **overrides: t.Any,
) -> Settings:
    """Read and validate settings from ``environ`` (default ``os.environ``).

    ``defaults`` fill fields the environment leaves unset; ``overrides`` win
    over it; ``check=False`` skips the checks across fields (values are still
    parsed).

    :raises ConfigError: naming every variable that breaks its rule.
    """
    environ = os.environ if environ is None else environ
    values: dict[str, t.Any] = dict(defaults or {})
    problems: list[str] = []
    for name, (field, parse) in _VARIABLES.items():
        raw = environ.get(name)
        if raw is None or raw == "":
            continue
        try:
            values[field] = parse(raw)
        except ValueError as exc:
            problems.append(f"{name} {exc}")
    values.update(overrides)
    settings = Settings(**values)
    if check:
        problems.extend(_cross_checks(settings))
    if problems:
        raise ConfigError(problems)
    return settings


def _cross_checks(settings: Settings) -> list[str]:
    problems = []
    if not settings.secret_key and not settings.development:
        problems.append("SECRET_KEY is required unless STREAMAPP_ENV=development")
    if settings.heartbeat_s >= settings.stream_lifetime_s:
        problems.append("STREAMAPP_HEARTBEAT_S must be smaller than STREAMAPP_STREAM_LIFETIME_S")
    if settings.max_event_bytes > settings.max_body_bytes:
        problems.append("STREAMAPP_MAX_EVENT_BYTES must not exceed STREAMAPP_MAX_BODY_BYTES")
    return problems


def log_format(environ: Mapping[str, str] | None = None) -> str:
    """``STREAMAPP_LOG_FORMAT`` alone, for gunicorn's logger, which is set up before the app loads.

    An invalid value reads as ``text`` here; the app's :func:`load_settings`
    then stops start-up naming the variable, like any other.
    """
    environ = os.environ if environ is None else environ
    _, parse = _VARIABLES["STREAMAPP_LOG_FORMAT"]
    try:
        return t.cast(str, parse(environ.get("STREAMAPP_LOG_FORMAT") or Settings.log_format))
    except ValueError:
        return Settings.log_format


def variables() -> list[str]:
    """Names of every variable :func:`load_settings` reads (for docs and tests)."""
    return list(_VARIABLES)
