"""A number with a unit written unquoted in the TOML file (`read_timeout = 500ms`,
`max_bytes = 256MiB`), as nginx and systemd files are written: not TOML, so tomllib refuses
the line before any setting is read, saying only "Expected newline or end of document after
a statement (at line 2, column 19)". Found here, so that loading.py can say that line as
the setting's mistake: its key, and what to write instead."""

from __future__ import annotations

import re
from typing import NamedTuple

# tomllib (Python 3.11-3.13) gives the place only in its message.
_PLACE = re.compile(r"\(at line (\d+), column \d+\)$")
_TABLE = re.compile(r"\s*(\[\[?)\s*([A-Za-z0-9_.\s-]+?)\s*\]\]?\s*(?:#.*)?")
_ROUTE = re.compile(r"\s*\[\[\s*routes\s*\]\]\s*(?:#.*)?")
_KEY_NUMBER_UNIT = re.compile(
    r"\s*([A-Za-z0-9_-]+)\s*=\s*([0-9]+(?:\.[0-9]*)?\s*[A-Za-z]+)\s*(?:#.*)?")


class UnquotedUnit(NamedTuple):
    table: str  # "proxy", "routes[0].cache"
    key: str
    value: str  # "500ms", "8 MB"
    line: int


def unquoted_unit(text: str, message: str) -> UnquotedUnit | None:
    """The `key = <number><unit>` line tomllib's `message` points at, with the [table] it
    is in; None when the mistake is another (tomllib's message then says it)."""
    place = _PLACE.search(message)
    if place is None:
        return None
    line = int(place[1])
    lines = text.splitlines()
    if not 1 <= line <= len(lines):
        return None
    setting = _KEY_NUMBER_UNIT.fullmatch(lines[line - 1])
    if setting is None:
        return None
    for above in reversed(lines[:line - 1]):
        header = _TABLE.fullmatch(above)
        if header is not None:  # ([[routes]]'s own keys are no section's: left to tomllib)
            if header[1] == "[[":
                return None
            table = re.sub(r"\s+", "", header[2])
            if table.startswith("routes."):  # named as loading.py names it: routes[0].cache
                routes = sum(1 for earlier in lines[:line - 1] if _ROUTE.fullmatch(earlier))
                table = f"routes[{routes - 1}].{table.partition('.')[2]}"
            return UnquotedUnit(table, setting[1], setting[2], line)
    return None  # above the first table: no setting lives there
