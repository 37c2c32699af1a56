"""A number with a unit written unquoted in the TOML file (`read_timeout = 500ms`,
`max_bytes = 256MiB`), as nginx and systemd files are written: not TOML, so tomllib refuses
the line before any setting is read, saying only "Expected newline or end of document after
a statement (at line 2, column 19)". Found here, so that loading.py can say that line as
the setting's mistake: its key, and what to write instead."""

from __future__ import annotations

import re
import tomllib
from typing import Any, NamedTuple

# tomllib (Python 3.11-3.13) gives the place only in its message.
_PLACE = re.compile(r"\(at line (\d+), column \d+\)$")
_KEY_NUMBER_UNIT = re.compile(
    r"[ \t]*([A-Za-z0-9_-]+)[ \t]*=[ \t]*([0-9]+(?:\.[0-9]*)?[ \t]*[A-Za-z]+)[ \t]*(?:#.*)?")
_MARK = "\u2063cacheproxy: unquoted unit\u2063"  # (U+2063: no file's key is this)


class UnquotedUnit(NamedTuple):
    table: str  # "proxy", "routes[0].cache"
    key: str
    value: str  # "500ms", "8 MB"
    line: int


def unquoted_unit(text: str, message: str) -> UnquotedUnit | None:
    """The `key = <number><unit>` line tomllib's `message` points at, with the table it
    is in; None when the mistake is another (tomllib's message then says it)."""
    place = _PLACE.search(message)
    if place is None:
        return None
    line = int(place[1])
    # Lines as tomllib counts them: by "\n" only (str.splitlines also splits at U+2028,
    # U+0085 and others, which a comment or string may hold, and would name another line).
    lines = text.split("\n")
    if not 1 <= line <= len(lines):
        return None
    setting = _KEY_NUMBER_UNIT.fullmatch(lines[line - 1].removesuffix("\r"))
    if setting is None:
        return None
    # Which table the key is in is tomllib's to say (quoted and dotted headers, [[routes]],
    # brackets inside multi-line strings and arrays): everything above parsed before the
    # mistake, so the text above plus a marked key (not the setting's: it may be there
    # already, said twice) parses too.
    above = "\n".join(lines[:line - 1])
    try:
        document = tomllib.loads(f'{above}\n"{_MARK}" = 0\n')
    except tomllib.TOMLDecodeError:
        return None
    table = _table_of_mark(document, "")
    if not table:  # above the first table, or [[routes]]'s own keys: left to tomllib
        return None
    return UnquotedUnit(table, setting[1], setting[2], line)


def _table_of_mark(value: Any, name: str) -> str | None:
    """The name (as loading.py says it: routes[0].cache) of the table holding the mark."""
    if isinstance(value, dict):
        if _MARK in value:
            return name
        for key, inner in value.items():
            found = _table_of_mark(inner, f"{name}.{key}" if name else key)
            if found is not None:
                return found
    elif isinstance(value, list):
        for index, inner in enumerate(value):
            found = _table_of_mark(inner, f"{name}[{index}]")
            if found is not None:
                return found
    return None
