"""The one typed, immutable configuration object, and how it is loaded.

Sources, later ones winning: defaults < TOML file < ``CACHEPROXY_<SECTION>_<KEY>`` environment
variables < overrides (command-line flags). Each value is converted and checked as it is read, so
a mistake stops the start with a `ConfigError` naming the key (or variable) it came from.

To add a section, declare a frozen dataclass whose fields use `setting()` and add it to `Config`:
the file keys, the environment variable names and the checks all follow from the fields.
`[[routes]]` tables come from the file only; each overrides keys of [cache], [cors], [referer].
"""

import math
import mimetypes
import os
import re
import tomllib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, fields, replace
from difflib import get_close_matches
from fractions import Fraction
from pathlib import Path
from typing import Any, NamedTuple, get_type_hints

from yarl import URL

from cacheproxy.policies import host_pattern_covers, normalize_path, parse_host_pattern
from cacheproxy.policies.cors import parse_origin_entry
from cacheproxy.policies.referer import parse_referrer_policy, parse_valid_referer

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
    parse: Callable[[Any], Any] | None = None  # converts the value instead of its type


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


def parse_list(value: object) -> tuple[str, ...]:
    """A list setting: a TOML list of strings, or one string split on commas (how the
    environment and flags give lists, and so `allow_headers = "*"` works in TOML too)."""
    if isinstance(value, str):
        return tuple(item.strip() for item in value.split(",") if item.strip())
    if isinstance(value, list | tuple) and all(isinstance(item, str) for item in value):
        items = tuple(item.strip() for item in value)
        if "" in items:
            raise ValueError(f"an empty entry in {list(value)!r}")
        return items
    raise ValueError(f"expected a list of strings or a comma-separated string, got {value!r}")


def _each(check: Callable[[str], object]) -> Callable[[tuple[str, ...]], None]:
    def check_all(values: tuple[str, ...]) -> None:
        for value in values:
            check(value)

    return check_all


def _check_star_alone(values: tuple[str, ...]) -> None:
    if "*" in values and len(values) > 1:
        raise ValueError(f"'*' means every one and must be alone, got {list(values)!r}")


def _check_tokens(values: tuple[str, ...]) -> None:
    # RFC 9110 §9.1, §5.1: method and field names are tokens.
    for value in values:
        if _TOKEN.fullmatch(value) is None:
            raise ValueError(f"expected a token (letters, digits, -._ ...), got {value!r}")
    _check_star_alone(values)


def _check_path_prefix(value: str) -> None:
    if not value.startswith("/") or any(c.isspace() or c in "?#" for c in value):
        raise ValueError(f"expected a path starting with '/', without spaces, '?' or '#', "
                         f"got {value!r}")
    if normalize_path(value) != value:  # requests are matched in this form
        raise ValueError(f"write it as {normalize_path(value)!r}, got {value!r}")


def _check_param_name(value: str) -> None:
    if any(c.isspace() or c in "&=?#" for c in value):
        raise ValueError(f"expected a query parameter name, got {value!r}")


@dataclass(frozen=True, slots=True)
class OnInvalid:
    """referer.on_invalid, read at load: "403", a URL to redirect to (302), or a placeholder
    file answered 200 with its bytes and a Content-Type guessed from its extension."""

    text: str  # as configured
    status: int
    location: str = ""
    body: bytes = field(default=b"", repr=False)
    content_type: str = ""

    def __str__(self) -> str:
        return self.text


PLACEHOLDER_MAX_BYTES = 1 * MiB
_ON_INVALID_USAGE = '"403", an http:// or https:// URL to redirect to, or a placeholder file'


def parse_on_invalid(value: object) -> OnInvalid:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"expected {_ON_INVALID_USAGE}, got {value!r}")
    text = value.strip()
    if text == "403":
        return OnInvalid(text, 403)
    if re.fullmatch(r"[0-9]{3}", text):
        raise ValueError(f"expected {_ON_INVALID_USAGE}; 403 is the only status, got {text!r}")
    if re.match(r"[A-Za-z][A-Za-z0-9+.\-]*:", text) and not Path(text).exists():
        _check_upstream(text)  # a Location: absolute http(s), no whitespace
        return OnInvalid(text, 302, location=text)
    try:  # read now: a missing file stops the start, not the first hotlink
        with open(text, "rb") as file:
            body = file.read(PLACEHOLDER_MAX_BYTES + 1)
    except OSError as exc:
        raise ValueError(f"expected {_ON_INVALID_USAGE}; cannot read the file {text!r}: "
                         f"{exc.strerror or exc}") from None
    if len(body) > PLACEHOLDER_MAX_BYTES:
        raise ValueError(f"the placeholder file {text!r} is over 1 MiB")
    content_type = mimetypes.guess_type(text, strict=False)[0] or "application/octet-stream"
    return OnInvalid(text, 200, body=body, content_type=content_type)


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
    workers: int = setting(1, ge=1, le=256)
    shutdown_timeout: float = setting(8.0, ge=0)


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
class CorsConfig:
    """[cors]: the CORS grant the proxy gives (Fetch standard §3.2); no origins, no CORS."""

    allow_origins: tuple[str, ...] = setting((), check=_each(parse_origin_entry))
    allow_methods: tuple[str, ...] = setting(("GET", "HEAD", "POST"), check=_check_tokens)
    allow_headers: tuple[str, ...] = setting((), check=_check_tokens)
    expose_headers: tuple[str, ...] = setting((), check=_check_tokens)
    allow_credentials: bool = setting(False)
    max_age: int = setting(600, ge=0)
    allow_private_network: bool = setting(False)
    mode: str = setting("override", choices=("override", "passthrough"))


@dataclass(frozen=True, slots=True)
class RefererConfig:
    """[referer]: hotlink protection (nginx valid_referers) and Referer leak protection."""

    protect_paths: tuple[str, ...] = setting((), check=_each(_check_path_prefix))
    valid_referers: tuple[str, ...] = setting(
        ("none", "blocked", "server_names"), check=_each(parse_valid_referer))
    on_invalid: OnInvalid = setting(  # noqa: RUF009 -- a field; OnInvalid is frozen
        OnInvalid("403", 403), parse=parse_on_invalid)
    policy: str = setting("strict-origin-when-cross-origin", check=parse_referrer_policy)
    policy_override: bool = setting(False)
    upstream_referer: str = setting("keep", choices=("keep", "origin", "strip"))
    strip_params: tuple[str, ...] = setting(
        ("gsid", "sid", "session", "sessionid", "token", "access_token"),
        check=_each(_check_param_name))


@dataclass(frozen=True, slots=True, kw_only=True)
class RouteConfig:
    """One [[routes]] table. Its sections are the top-level ones with its own keys replaced."""

    host: str = ""  # "" any host, "example.com", or "*.example.com"; lowercase, no port
    path_prefix: str = "/"
    upstream: str
    cache: CacheConfig = field(default_factory=CacheConfig)
    cors: CorsConfig = field(default_factory=CorsConfig)
    referer: RefererConfig = field(default_factory=RefererConfig)


@dataclass(frozen=True, slots=True)
class Config:
    """Everything, one section per table; config/cacheproxy.toml documents each key."""

    proxy: ProxyConfig = field(default_factory=ProxyConfig)
    cache: CacheConfig = field(default_factory=CacheConfig)
    demo: DemoConfig = field(default_factory=DemoConfig)
    log: LogConfig = field(default_factory=LogConfig)
    admin: AdminConfig = field(default_factory=AdminConfig)
    cors: CorsConfig = field(default_factory=CorsConfig)
    referer: RefererConfig = field(default_factory=RefererConfig)
    routes: tuple[RouteConfig, ...] = ()  # [[routes]]: in the file only, not a [section]


def _check_sections(cache: CacheConfig, cors: CorsConfig, referer: RefererConfig,
                    prefix: str = "") -> None:
    """Rules across settings of the sections a route can override; `prefix` "routes[1]."."""
    if cache.max_object_bytes > cache.max_bytes:
        raise ConfigError(
            f"{prefix}cache.max_object_bytes",
            f"must not exceed cache.max_bytes ({cache.max_bytes}), got {cache.max_object_bytes}",
        )
    if cors.allow_credentials and "*" in cors.allow_origins:
        raise ConfigError(
            f"{prefix}cors.allow_origins",
            "'*' cannot go with allow_credentials = true: browsers refuse a credentialed "
            "response whose Access-Control-Allow-Origin is '*' (Fetch standard §3.2.5); list "
            f"the origins to trust instead, got {list(cors.allow_origins)!r}",
        )
    if cors.allow_credentials and "*" in cors.expose_headers:
        raise ConfigError(
            f"{prefix}cors.expose_headers",
            "'*' cannot go with allow_credentials = true: browsers then read it as a header "
            "named '*' (Fetch standard §3.2.3); list the header names",
        )
    if referer.protect_paths and not referer.valid_referers:
        raise ConfigError(
            f"{prefix}referer.valid_referers",
            "is empty, so every request for referer.protect_paths would be refused",
        )


def _check_across(config: Config) -> None:
    """Rules that involve more than one setting, checked once everything is merged."""
    _check_sections(config.cache, config.cors, config.referer)
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
        if name == ROUTES:
            continue
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
    document = _read_file(path)
    chosen: dict[str, dict[str, object]] = {name: {} for name in schema}
    for source in (
        _from_file(document, schema),
        _from_env(os.environ if env is None else env, schema),
        _from_overrides(overrides or {}, schema),
    ):
        for raw in source:
            setting = schema[raw.section].settings[raw.key]
            chosen[raw.section][raw.key] = _value(raw.source, raw.value, setting, raw.from_text)
    config = Config(**{name: s.cls(**chosen[name]) for name, s in schema.items()})
    _check_across(config)
    if ROUTES in document:
        config = replace(config, routes=_routes(document[ROUTES], config, schema))
    return config


def _value(source: str, value: object, setting: _Setting, from_text: bool) -> Any:
    try:
        converted = _convert(value, setting.kind, setting.rule, from_text)
        _check(converted, setting.rule)
    except ValueError as exc:
        raise ConfigError(source, str(exc)) from None
    return converted


def _unknown(kind: str, name: str, known: list[str], prefix: str = "") -> str:
    # Matched without the shared prefix, which would make every name look close.
    close = get_close_matches(name, known, n=1)
    return f"unknown {kind}; did you mean {prefix}{close[0]}?" if close else f"unknown {kind}"


def _read_file(path: str | Path | None) -> dict[str, Any]:
    if path is None:
        return {}
    try:
        with open(path, "rb") as file:
            return tomllib.load(file)
    except FileNotFoundError:
        raise ConfigError(str(path), "file not found") from None
    except OSError as exc:
        raise ConfigError(str(path), f"cannot read the file: {exc.strerror or exc}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(str(path), f"invalid TOML: {exc}") from None


def _from_file(document: dict[str, Any], schema: dict[str, _Section]) -> Iterator[_Raw]:
    for section, table in document.items():
        if section == ROUTES:
            continue  # read by _routes() once the sections it merges over are known
        if section not in schema:
            raise ConfigError(section, _unknown("section", section, [*schema, ROUTES]))
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
        if section == ROUTES:
            raise ConfigError(name, "routes cannot be set from the environment; write them "
                                    "as [[routes]] tables in the config file")
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


# --- [[routes]] ---------------------------------------------------------------------------------

ROUTES = "routes"
_ROUTE_SECTIONS = ("cache", "cors", "referer")
# One store serves every route, so its settings cannot differ per route.
_STORE_WIDE = frozenset({
    "store", "redis_url", "redis_prefix", "redis_timeout", "redis_retry_interval",
    "max_bytes", "memory_layer_bytes", "memory_layer_ttl",
})


def _route_upstream(value: str) -> str:
    if value == "":
        raise ValueError("a route needs its origin: an absolute http:// or https:// URL")
    _check_upstream(value)
    return value


def _route_path_prefix(value: str) -> str:
    _check_path_prefix(value)
    return value


# A route's own keys: (default, None if required; the value as stored, or ValueError).
_ROUTE_KEYS: dict[str, tuple[str | None, Callable[[str], str]]] = {
    "host": ("", parse_host_pattern),
    "path_prefix": ("/", _route_path_prefix),
    "upstream": (None, _route_upstream),
}


def _routes(tables: object, config: Config, schema: dict[str, _Section]) -> tuple[RouteConfig, ...]:
    if not isinstance(tables, list):
        raise ConfigError(ROUTES, f"expected [[routes]] tables, an array of tables; got {tables!r}")
    routes = tuple(_route(f"routes[{i}]", table, config, schema) for i, table in enumerate(tables))
    _check_reachable(routes)
    return routes


def _check_reachable(routes: tuple[RouteConfig, ...]) -> None:
    """First match wins, so a route that an earlier one always wins over is a mistake."""
    for later, route in enumerate(routes):
        for earlier, first in enumerate(routes[:later]):
            if host_pattern_covers(first.host, route.host) and route.path_prefix.startswith(
                first.path_prefix
            ):
                covers = (
                    "is a catch-all (any host, path_prefix \"/\"), allowed only as the last route"
                    if (first.host, first.path_prefix) == ("", "/")
                    else f"(host {first.host or 'any'!r}, path_prefix {first.path_prefix!r}) "
                    "matches every request this one would"
                )
                raise ConfigError(
                    f"routes[{later}]",
                    f"can never match: routes[{earlier}] comes first and {covers}; put the "
                    "narrower route first",
                )


def _route(name: str, table: object, config: Config, schema: dict[str, _Section]) -> RouteConfig:
    if not isinstance(table, dict):
        raise ConfigError(name, f"expected a [[routes]] table, got {table!r}")
    known = [*_ROUTE_KEYS, *_ROUTE_SECTIONS]
    for key in table:
        if key not in known:
            raise ConfigError(f"{name}.{key}", _unknown("key", key, known, f"{name}."))
    own: dict[str, Any] = {}
    for key, (default, check) in _ROUTE_KEYS.items():
        if key not in table:
            if default is None:
                raise ConfigError(f"{name}.{key}", "missing: every route needs its own")
            continue
        text = _value(f"{name}.{key}", table[key], _Setting(str, Rule()), from_text=False)
        try:
            own[key] = check(text)
        except ValueError as exc:
            raise ConfigError(f"{name}.{key}", str(exc)) from None
    sections = {
        section: _route_section(f"{name}.{section}", table.get(section, {}),
                                getattr(config, section), schema[section])
        for section in _ROUTE_SECTIONS
    }
    route = RouteConfig(**own, **sections)
    _check_sections(route.cache, route.cors, route.referer, prefix=f"{name}.")
    return route


def _route_section(name: str, table: object, base: Any, section: _Section) -> Any:
    """The top-level section `base` with the keys this route sets replaced (key-level merge)."""
    if not isinstance(table, dict):
        raise ConfigError(name, f"expected a [{name}] table, got {table!r}")
    changes = {}
    for key, value in table.items():
        source = f"{name}.{key}"
        if key not in section.settings:
            raise ConfigError(source, _unknown("key", key, list(section.settings), f"{name}."))
        if section.cls is CacheConfig and key in _STORE_WIDE:
            raise ConfigError(source, f"one store serves every route: set cache.{key} in "
                                      "[cache], not per route")
        changes[key] = _value(source, value, section.settings[key], from_text=False)
    return replace(base, **changes)


_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off"}


def _convert(value: object, kind: type, rule: Rule, from_text: bool) -> object:
    """`value` as `kind`, or ValueError. TOML values must already have the type (bool is not
    an int; an int is a fine float); text from env and flags is parsed."""
    if rule.size:
        return parse_size(value)
    if rule.parse is not None:
        return rule.parse(value)
    if kind == tuple[str, ...]:
        return parse_list(value)
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
