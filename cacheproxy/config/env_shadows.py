"""Settings the config file changes that a CACHEPROXY_* environment variable overrides.

The environment wins over the file (README, Configuration), and a container sets several:
the image's ENV (proxy.listen, proxy.pid_file) and compose's `environment` (the store,
redis_url, via, ...). An operator who edits the mounted file and reloads sees "configuration
reloaded" while the edit does nothing. Said as a warning, naming the variable and the key,
never a value (a token or a redis_url's password). The shipped file spells out every
default, so a line left at its default is no edit and is not said.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import fields
from pathlib import Path
from typing import Any

from cacheproxy.config.loading import _from_env, _from_file, _read_file, _schema, _value
from cacheproxy.config.values import DEFAULT_PATH


def env_overrides_of_file(path: str | Path | None, env: Mapping[str, str],
                          flagged: Collection[str] = ()) -> list[tuple[str, str]]:
    """(variable, "section.key") for each key the file sets to other than its default that
    a variable sets to another value, unless a flag sets it (flagged: "section.key"s; a
    flag wins over both). Call it on sources load_config accepted."""
    schema = _schema()
    if path is None and DEFAULT_PATH.is_file():
        path = DEFAULT_PATH
    document = _read_file(path, schema)
    defaults: dict[str, Any] = {}
    for name, section in schema.items():
        defaults.update({f"{name}.{f.name}": f.default for f in fields(section.cls)})
    edited = {}
    for raw in _from_file(document, schema):
        value = _value(raw.source, raw.value, schema[raw.section].settings[raw.key], False)
        if value != defaults[raw.source]:
            edited[raw.source] = value
    found = []
    for raw in _from_env(env, schema):
        key = f"{raw.section}.{raw.key}"
        if key in edited and key not in flagged and _value(
                raw.source, raw.value, schema[raw.section].settings[raw.key], True) != edited[key]:
            found.append((raw.source, key))
    return found


def warnings(path: str | Path | None, env: Mapping[str, str],
             flagged: Collection[str] = ()) -> list[str]:
    where = path if path is not None else DEFAULT_PATH
    return [f"warning: {variable} in the environment overrides {key} set in {where} (the "
            "environment wins over the file)" for variable, key in
            env_overrides_of_file(path, env, flagged)]
