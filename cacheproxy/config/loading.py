"""Loading: defaults < TOML file < CACHEPROXY_<SECTION>_<KEY> environment variables <
overrides (flags), each value converted and checked as it is read; and the [[routes]]
tables, which come from the file only."""

from __future__ import annotations

import math
import os
import re
import tomllib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import fields, replace
from difflib import get_close_matches
from fractions import Fraction
from pathlib import Path
from typing import Any, NamedTuple, get_type_hints

from cacheproxy.config.entries import host_pattern_covers, parse_host_pattern
from cacheproxy.config.sections import (
    CacheConfig,
    Config,
    RouteConfig,
    _check_across,
    _check_sections,
)
from cacheproxy.config.unquoted_units import UnquotedUnit, unquoted_unit
from cacheproxy.config.values import (
    DEFAULT_PATH,
    ENV_PREFIX,
    ConfigError,
    Rule,
    _check_path_prefix,
    _check_upstream,
    parse_list,
    parse_size,
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
    document = _read_file(path, schema)
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


def _read_file(path: str | Path | None, schema: dict[str, _Section]) -> dict[str, Any]:
    if path is None:
        return {}
    if str(path) == "":  # `--config "$CONFIG"` with the variable unset: not ": file not found"
        raise ConfigError("--config", "an empty file name; give a TOML file's path, or leave "
                                      "--config out for config/cacheproxy.toml")
    text = ""
    try:
        with open(path, "rb") as file:
            data = file.read()
        # A byte order mark, as Windows editors save "UTF-8": tomllib calls it an "Invalid
        # statement (at line 1, column 1)"; its lines and columns are the same without it.
        text = data.removeprefix(b"\xef\xbb\xbf").decode("utf-8")
        return tomllib.loads(text)
    except FileNotFoundError:
        raise ConfigError(str(path), "file not found") from None
    except OSError as exc:
        raise ConfigError(str(path), f"cannot read the file: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        unit = unquoted_unit(text, str(exc))
        said = _unquoted_unit_error(unit, path, schema) if unit is not None else None
        raise (said or ConfigError(str(path), f"invalid TOML: {exc}")) from None
    except UnicodeDecodeError as exc:
        raise ConfigError(str(path), f"invalid TOML: {exc}") from None


def _unquoted_unit_error(unit: UnquotedUnit, path: str | Path,
                         schema: dict[str, _Section]) -> ConfigError | None:
    """`read_timeout = 500ms` unquoted, which is no TOML: said as the setting's mistake,
    with what to write (a size's text quoted, a duration's number of seconds); None for
    any other setting, which keeps tomllib's message."""
    # A route's tables ([routes.cache]) hold their section's own settings.
    name = unit.table.rpartition(".")[2] if unit.table.startswith("routes[") else unit.table
    section = schema.get(name)
    setting = section.settings.get(unit.key) if section is not None else None
    if setting is None:
        return None
    where = f"{unit.value} ({path}, line {unit.line})"
    if setting.rule.size:
        return ConfigError(f"{unit.table}.{unit.key}", f"expected a size, got {where}; a "
                           f'size with a unit is a string: write "{unit.value}"')
    hint = _unit_hint(unit.value) if setting.kind in (int, float) else ""
    if not hint:
        return None
    return ConfigError(f"{unit.table}.{unit.key}", f"expected a number, got {where}{hint}")


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
    "max_bytes", "memory_layer_bytes", "memory_layer_ttl", "fill_buffer_bytes",
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
        raise ValueError(f"expected an integer, got {value!r}{_unit_hint(value)}")
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
            raise ValueError(f"expected a number, got {value!r}{_unit_hint(value)}")
        return number
    if kind is str:
        if isinstance(value, str):
            return value
        raise ValueError(f"expected a string, got {value!r}")
    raise TypeError(f"a setting cannot have type {kind!r}")  # a mistake in a dataclass above


# "60s", "500ms", "2m", as nginx's time syntax and systemd write them.
_WITH_UNIT = re.compile(r"([0-9]+(?:\.[0-9]*)?)\s*(ms|s|secs?|seconds?|m|mins?|h|d)", re.I)
_UNIT_SECONDS = {"ms": Fraction(1, 1000), "m": 60, "min": 60, "mins": 60, "h": 3600,
                 "d": 86400}


def _unit_hint(value: object) -> str:
    """What to write instead of a duration with a unit: settings in seconds (timeouts,
    max_age) take a plain number, so say which ("60s" alone would only be "wrong")."""
    match = _WITH_UNIT.fullmatch(value.strip()) if isinstance(value, str) else None
    if match is None:
        return ""
    seconds = Fraction(match[1]) * _UNIT_SECONDS.get(match[2].lower(), 1)
    return f"; durations are plain numbers of seconds, without a unit: write {float(seconds):g}"


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
