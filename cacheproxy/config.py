"""The one typed, immutable configuration object, and how it is loaded.

Sources, later ones winning: defaults < TOML file < ``CACHEPROXY_<SECTION>_<KEY>`` environment
variables < overrides (command-line flags). Each value is converted and checked as it is read, so
a mistake stops the start with a `ConfigError` naming the key (or variable) it came from.

To add a section, declare a frozen dataclass whose fields use `setting()` and add it to `Config`:
the file keys, the environment variable names and the checks all follow from the fields.
"""

import math
import os
import re
import tomllib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, fields
from difflib import get_close_matches
from fractions import Fraction
from pathlib import Path
from typing import Any, NamedTuple, get_type_hints

from yarl import URL

DEFAULT_PATH = Path("config/cacheproxy.toml")
ENV_PREFIX = "CACHEPROXY_"
KiB = 1024
MiB = 1024 * KiB


class ConfigError(Exception):
    """A configuration mistake: `key` names where it is, `reason` says what is wrong."""

    def __init__(self, key: str, reason: str) -> None:
        super().__init__(f"{key}: {reason}")
        self.key = key
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Rule:
    """How one setting is read and checked; kept in its dataclass field's metadata."""

    size: bool = False  # an int of bytes, also written as "64MiB"
    choices: tuple[str, ...] = ()
    gt: float | None = None
    ge: float | None = None
    le: float | None = None
    check: Callable[[Any], object] | None = None  # raises ValueError(reason)


def setting(default: Any, **rule: Any) -> Any:
    """A dataclass field for one setting; `rule` holds `Rule` arguments (size, choices, ...)."""
    return field(default=default, metadata={"rule": Rule(**rule)})


# --- value parsers ------------------------------------------------------------------------------

_SIZE = re.compile(r"([0-9]+(?:\.[0-9]+)?)\s*([A-Za-z]*)", re.ASCII)
_SIZE_UNITS = {
    "": 1, "b": 1,
    "kb": 1000, "mb": 1000**2, "gb": 1000**3, "tb": 1000**4,
    "kib": 1024, "mib": 1024**2, "gib": 1024**3, "tib": 1024**4,
}  # fmt: skip
_SIZE_EXAMPLE = "a size such as 1048576, '64KiB', '8MiB' or '1GB'"


def parse_size(value: object) -> int:
    """Bytes from an int or a string like "512", "64KiB", "1.5 GiB" (1024s) or "10MB" (1000s)."""
    if isinstance(value, int) and not isinstance(value, bool):
        if value < 0:
            raise ValueError(f"a size cannot be negative, got {value}")
        return value
    if not isinstance(value, str):
        raise ValueError(f"expected {_SIZE_EXAMPLE}, got {value!r}")
    text = value.strip()
    if text.startswith("-"):
        raise ValueError(f"a size cannot be negative, got {value!r}")
    match = _SIZE.fullmatch(text)
    if match is None:
        raise ValueError(f"expected {_SIZE_EXAMPLE}, got {value!r}")
    number, unit = match.groups()
    multiplier = _SIZE_UNITS.get(unit.lower())
    if multiplier is None:
        raise ValueError(
            f"unknown size unit {unit!r}; use B, KiB, MiB, GiB, TiB (powers of 1024) "
            "or KB, MB, GB, TB (powers of 1000)"
        )
    size = Fraction(number) * multiplier  # exact, unlike float: "1.1MB" is 1100000
    if size.denominator != 1:
        raise ValueError(f"not a whole number of bytes: {value!r}")
    return int(size)


_PORT = re.compile(r"[0-9]{1,5}", re.ASCII)


def parse_listen(value: str) -> tuple[str, int]:
    """(host, port) from "HOST:PORT" or "[IPv6]:PORT"; port 0 asks the OS for a free one."""
    usage = f"expected HOST:PORT such as 127.0.0.1:8080 or [::1]:8080, got {value!r}"
    if not isinstance(value, str):
        raise ValueError(usage)
    host, sep, port_text = value.rpartition(":")
    if not sep or not host:
        raise ValueError(usage)
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise ValueError(f"an IPv6 address needs brackets, as in [::1]:8080; got {value!r}")
    if not host or any(c.isspace() or c in "[]/@" for c in host):
        raise ValueError(usage)
    if _PORT.fullmatch(port_text) is None or int(port_text) > 65535:
        raise ValueError(f"port must be a number from 0 to 65535, got {port_text!r}")
    return host, int(port_text)


def _check_upstream(value: str) -> None:
    if value == "":
        return  # no origin given: the bundled demo origin is started instead
    if any(c.isspace() for c in value):
        raise ValueError(f"a URL cannot contain whitespace, got {value!r}")
    try:
        url = URL(value)
        url.port  # noqa: B018 -- yarl checks the port range only when it is read
    except ValueError as exc:
        raise ValueError(f"not a valid URL ({exc}): {value!r}") from None
    # yarl refuses "http://:80" and calls "http://" relative: absolute here means it has a host.
    if not url.is_absolute() or url.scheme not in ("http", "https"):
        raise ValueError(f"expected an absolute http:// or https:// URL, got {value!r}")


def _check_redis_url(value: str) -> None:
    try:
        url = URL(value)
    except ValueError as exc:
        raise ValueError(f"not a valid URL ({exc}): {value!r}") from None
    if url.scheme not in ("redis", "rediss", "unix") or (url.scheme != "unix" and not url.host):
        raise ValueError(
            f"expected redis://HOST:PORT/DB, rediss://... or unix:///path, got {value!r}")


_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+", re.ASCII)


def _check_token(value: str) -> None:
    # RFC 9110 §7.6.3: a Via pseudonym is a token (§5.6.2).
    if _TOKEN.fullmatch(value) is None:
        raise ValueError(f"expected a non-empty token (letters, digits, -._ ...), got {value!r}")


# --- the configuration --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ProxyConfig:
    """[proxy]: where the proxy listens and how it talks to the origin."""

    listen: str = setting("127.0.0.1:8080", check=parse_listen)
    upstream: str = setting("", check=_check_upstream)
    host_header: str = setting("upstream", choices=("upstream", "pass"))
    via: str = setting("cacheproxy", check=_check_token)
    x_forwarded_for: bool = setting(True)
    x_forwarded_proto: bool = setting(True)
    x_forwarded_host: bool = setting(True)
    connect_timeout: float = setting(5.0, gt=0)
    read_timeout: float = setting(30.0, gt=0)
    max_connections: int = setting(256, ge=1)


@dataclass(frozen=True, slots=True)
class CacheConfig:
    """[cache]: what is stored, how much, and for how long."""

    store: str = setting("memory", choices=("memory", "redis"))
    redis_url: str = setting("redis://127.0.0.1:6379/0", check=_check_redis_url)
    redis_prefix: str = setting("cacheproxy:")
    redis_timeout: float = setting(0.5, gt=0)
    redis_retry_interval: float = setting(2.0, gt=0)
    memory_layer_bytes: int = setting(32 * MiB, size=True, ge=0)
    memory_layer_ttl: float = setting(1.0, ge=0)
    shared: bool = setting(True)
    max_bytes: int = setting(256 * MiB, size=True, ge=1)
    max_object_bytes: int = setting(8 * MiB, size=True, ge=1)
    heuristic_fraction: float = setting(0.1, ge=0, le=1)
    heuristic_max_age: float = setting(86400.0, ge=0)
    set_cookie: str = setting("bypass", choices=("bypass", "strip"))
    collapse: bool = setting(True)
    collapse_timeout: float = setting(10.0, gt=0)


@dataclass(frozen=True, slots=True)
class DemoConfig:
    """[demo]: the bundled origin started when proxy.upstream is empty."""

    listen: str = setting("127.0.0.1:8081", check=parse_listen)


def _check_prefix(value: str) -> None:
    if not (value.startswith("/") and value.endswith("/") and len(value) > 1):
        raise ValueError(f"expected a path that starts and ends with '/', got {value!r}")
    if any(c.isspace() or c in "?#" for c in value):
        raise ValueError(f"a path prefix cannot contain spaces, '?' or '#', got {value!r}")


def _check_metrics_path(value: str) -> None:
    if value and (not value.startswith("/") or any(c.isspace() or c in "?#" for c in value)):
        raise ValueError(f"expected an absolute path such as /metrics, or \"\", got {value!r}")


@dataclass(frozen=True, slots=True)
class LogConfig:
    """[log]: the request log, one line per request."""

    path: str = setting("")
    format: str = setting("json", choices=("json", "text", "off"))


@dataclass(frozen=True, slots=True)
class AdminConfig:
    """[admin]: the admin API, /metrics and the dashboard, answered by the proxy itself."""

    prefix: str = setting("/_cacheproxy/", check=_check_prefix)
    token: str = setting("")
    metrics_path: str = setting("/metrics", check=_check_metrics_path)


@dataclass(frozen=True, slots=True)
class Config:
    """Everything, one section per table; config/cacheproxy.toml documents each key."""

    proxy: ProxyConfig = field(default_factory=ProxyConfig)
    cache: CacheConfig = field(default_factory=CacheConfig)
    demo: DemoConfig = field(default_factory=DemoConfig)
    log: LogConfig = field(default_factory=LogConfig)
    admin: AdminConfig = field(default_factory=AdminConfig)


def _check_across(config: Config) -> None:
    """Rules that involve more than one setting, checked once everything is merged."""
    cache = config.cache
    if cache.max_object_bytes > cache.max_bytes:
        raise ConfigError(
            "cache.max_object_bytes",
            f"must not exceed cache.max_bytes ({cache.max_bytes}), got {cache.max_object_bytes}",
        )
    demo_address = parse_listen(config.demo.listen)
    demo_runs = not config.proxy.upstream
    if demo_runs and demo_address[1] != 0 and demo_address == parse_listen(config.proxy.listen):
        raise ConfigError(
            "demo.listen",
            f"must differ from proxy.listen ({config.proxy.listen}): with no "
            "proxy.upstream the demo origin listens beside the proxy",
        )


# --- loading ------------------------------------------------------------------------------------


class _Setting(NamedTuple):
    kind: type
    rule: Rule


class _Section(NamedTuple):
    cls: type
    settings: dict[str, _Setting]


class _Raw(NamedTuple):
    source: str  # the name an error reports: "cache.max_bytes" or "CACHEPROXY_CACHE_MAX_BYTES"
    section: str
    key: str
    value: object
    from_text: bool  # env and flag values are strings, converted by the field's type


def _schema() -> dict[str, _Section]:
    schema = {}
    for name, cls in get_type_hints(Config).items():
        kinds = get_type_hints(cls)
        settings = {f.name: _Setting(kinds[f.name], f.metadata["rule"]) for f in fields(cls)}
        schema[name] = _Section(cls, settings)
    return schema


def load_config(
    path: str | Path | None = None,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, object] | None = None,
) -> Config:
    """The configuration from defaults, `path`, `env` (os.environ if None) and `overrides`.

    `path` None means ./config/cacheproxy.toml if it exists. `overrides` are keyed like
    "proxy.upstream"; a None value is skipped, so unset flags can be passed as they are.
    """
    schema = _schema()
    if path is None and DEFAULT_PATH.is_file():
        path = DEFAULT_PATH
    chosen: dict[str, dict[str, object]] = {name: {} for name in schema}
    for source in (
        _from_file(path, schema),
        _from_env(os.environ if env is None else env, schema),
        _from_overrides(overrides or {}, schema),
    ):
        for raw in source:
            kind, rule = schema[raw.section].settings[raw.key]
            try:
                value = _convert(raw.value, kind, rule, raw.from_text)
                _check(value, rule)
            except ValueError as exc:
                raise ConfigError(raw.source, str(exc)) from None
            chosen[raw.section][raw.key] = value
    config = Config(**{name: s.cls(**chosen[name]) for name, s in schema.items()})
    _check_across(config)
    return config


def _unknown(kind: str, name: str, known: list[str], prefix: str = "") -> str:
    # Matched without the shared prefix, which would make every name look close.
    close = get_close_matches(name, known, n=1)
    return f"unknown {kind}; did you mean {prefix}{close[0]}?" if close else f"unknown {kind}"


def _from_file(path: str | Path | None, schema: dict[str, _Section]) -> Iterator[_Raw]:
    if path is None:
        return
    try:
        with open(path, "rb") as file:
            document = tomllib.load(file)
    except FileNotFoundError:
        raise ConfigError(str(path), "file not found") from None
    except OSError as exc:
        raise ConfigError(str(path), f"cannot read the file: {exc.strerror or exc}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(str(path), f"invalid TOML: {exc}") from None
    for section, table in document.items():
        if section not in schema:
            raise ConfigError(section, _unknown("section", section, list(schema)))
        if not isinstance(table, dict):
            raise ConfigError(section, f"expected a [{section}] table, got {table!r}")
        known = schema[section].settings
        for key, value in table.items():
            name = f"{section}.{key}"
            if key not in known:
                raise ConfigError(name, _unknown("key", key, list(known), f"{section}."))
            yield _Raw(name, section, key, value, from_text=False)


def _from_env(env: Mapping[str, str], schema: dict[str, _Section]) -> Iterator[_Raw]:
    names = [f"{s}_{k}".upper() for s in schema for k in schema[s].settings]
    for name in sorted(env):  # sorted: the same mistake is reported first on every run
        if not name.startswith(ENV_PREFIX):
            continue
        # Section names have no underscore, so the first one after the prefix ends the section.
        rest = name.removeprefix(ENV_PREFIX)
        section, _, key = rest.lower().partition("_")
        if section not in schema or key not in schema[section].settings:
            raise ConfigError(name, _unknown("environment variable", rest, names, ENV_PREFIX))
        yield _Raw(name, section, key, env[name], from_text=True)


def _from_overrides(overrides: Mapping[str, object], schema: dict[str, _Section]) -> Iterator[_Raw]:
    for name, value in overrides.items():
        if value is None:
            continue
        section, _, key = name.partition(".")
        if section not in schema or key not in schema[section].settings:
            raise ConfigError(name, "unknown key")
        yield _Raw(name, section, key, value, from_text=isinstance(value, str))


_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off"}


def _convert(value: object, kind: type, rule: Rule, from_text: bool) -> object:
    """`value` as `kind`, or ValueError. TOML values must already have the type (bool is not
    an int; an int is a fine float); text from env and flags is parsed."""
    if rule.size:
        return parse_size(value)
    text = value.strip() if from_text and isinstance(value, str) else None
    if kind is bool:
        if isinstance(value, bool):
            return value
        if text is not None and text.lower() in _TRUE | _FALSE:
            return text.lower() in _TRUE
        raise ValueError(f"expected true or false, got {value!r}")
    if kind is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if text is not None and re.fullmatch(r"[+-]?[0-9]+", text, re.ASCII):
            return int(text)
        raise ValueError(f"expected an integer, got {value!r}")
    if kind is float:
        number = math.nan
        try:
            if isinstance(value, int | float) and not isinstance(value, bool):
                number = float(value)
            elif text is not None:
                number = float(text)
        except (ValueError, OverflowError):
            pass
        if not math.isfinite(number):  # nan and inf pass no range check sensibly
            raise ValueError(f"expected a number, got {value!r}")
        return number
    if kind is str:
        if isinstance(value, str):
            return value
        raise ValueError(f"expected a string, got {value!r}")
    raise TypeError(f"a setting cannot have type {kind!r}")  # a mistake in a dataclass above


def _check(value: Any, rule: Rule) -> None:
    if rule.choices and value not in rule.choices:
        raise ValueError(f"expected one of {', '.join(map(repr, rule.choices))}, got {value!r}")
    if rule.gt is not None and not value > rule.gt:
        raise ValueError(f"must be greater than {rule.gt}, got {value!r}")
    if rule.ge is not None and not value >= rule.ge:
        raise ValueError(f"must be at least {rule.ge}, got {value!r}")
    if rule.le is not None and not value <= rule.le:
        raise ValueError(f"must be at most {rule.le}, got {value!r}")
    if rule.check is not None:
        rule.check(value)
