"""Third reading of the last merges (review-third8): the unquoted-unit finder in the config
loader (config/unquoted_units.py), the pid file's flock claim (pidfile.py), per-variant
request collapsing with LEADER_LEFT (proxy/collapse.py, driver.py) and the 499 for a client
that left before its answer began (client_conn.py). Each test says what was wrong, what a
user saw, and how bad it was."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from processes import clean_env

from cacheproxy.config import ConfigError, load_config


def _load_error(tmp_path: Path, text: str) -> ConfigError:
    path = tmp_path / "cacheproxy.toml"
    path.write_text(text, encoding="utf-8", newline="")
    with pytest.raises(ConfigError) as info:
        load_config(path, env={})
    return info.value


@pytest.mark.parametrize(("text", "key", "line"), [
    ("[proxy]\n# note\u2028connect_timeout = 5s\nread_timeout = 500ms\n",
     "proxy.read_timeout", 3),
    ("[proxy]\nvia = \"a\u0085b\"\nconnect_timeout = 5s\n", "proxy.connect_timeout", 3),
    ("[cache]\nmax_bytes = \"1MiB\"\n[\"proxy\"]\nread_timeout = 500ms\n",
     "proxy.read_timeout", 4),
    ("[proxy]\r\nread_timeout = 500ms # as nginx\r\n", "proxy.read_timeout", 2),
], ids=["u2028-in-comment", "nel-in-string", "quoted-header", "crlf"])
def test_an_unquoted_unit_is_said_on_the_key_and_line_tomllib_points_at(
        tmp_path: Path, text: str, key: str, line: int) -> None:
    """What was wrong: the finder split the file with str.splitlines(), which also splits
    at U+2028, U+0085 and other characters a TOML comment or string may hold, while
    tomllib counts lines by "\\n" only; and it found the table with a regex that did not
    know quoted headers (`["proxy"]`) and walked past them. A user saw the mistake named
    on another key (`proxy.connect_timeout` for a `read_timeout = 500ms` line, the one a
    pasted comment's U+2028 put in its place), or tomllib's bare message for a quoted
    header. Now the lines are tomllib's and the table is tomllib's own reading of the text
    above the line. Severity: low (a wrong key named in a start error)."""
    error = _load_error(tmp_path, text)
    assert error.key == key
    assert f"cacheproxy.toml, line {line})" in error.reason


def test_a_route_table_without_routes_array_names_no_routes_minus_one(tmp_path: Path) -> None:
    """What was wrong: `[routes.cache]` with no `[[routes]]` above (routes a table, not
    the array of routes) was named `routes[-1].cache.max_bytes`: an index no route has.
    Now it is left to tomllib's message. Severity: low."""
    error = _load_error(tmp_path, "[routes.cache]\nmax_bytes = 256MiB\n")
    assert "routes[-1]" not in f"{error.key} {error.reason}"
    assert error.reason.startswith("invalid TOML: ")


def test_a_long_bracketed_line_above_an_unquoted_unit_does_not_stall_the_start(
        tmp_path: Path) -> None:
    """What was wrong: the [table] regex (`\\s*` on both sides of a lazy group that also
    takes spaces) backtracked cubically on a line of `[` and spaces with no `]`, which a
    multi-line string or array may hold above the mistake: 3,000 spaces took 7 s and
    10,000 several minutes before the start error was said (a `serve` that seemed to hang).
    Now no regex reads the lines above. Severity: low."""
    text = "[proxy]\nvia = \"\"\"\n[" + " " * 20_000 + "x\n\"\"\"\nread_timeout = 500ms\n"
    path = tmp_path / "cacheproxy.toml"
    path.write_text(text, encoding="utf-8")
    code = ("import sys\nfrom cacheproxy.config import ConfigError, load_config\n"
            "try:\n    load_config(sys.argv[1], env={})\n"
            "except ConfigError as e:\n    print(e.key)\n")
    # A hang guard, not a timing: the finder takes milliseconds, the old regex half an hour.
    done = subprocess.run([sys.executable, "-c", code, str(path)], env=clean_env(),
                          capture_output=True, text=True, timeout=60)
    assert done.stdout.strip() == "proxy.read_timeout", done.stderr
