"""The docs5 review: the README after a day of edits (61fa4df..9d5bf2b) read against the
code, as a new user and an operator read it: the Quickstart and "Running it" commands run
as written, every config key, flag, exit status and log message today's text names, the
contradictions between today's text and older text, and the Limits section against the
strict xfails. What the code did not do as the README says is tested here; the README
corrections themselves are in the review's report (the lead writes the README)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from processes import clean_env
from test_config import load_error


@pytest.mark.parametrize(("line", "key", "said"), [
    ("[proxy]\nread_timeout = 500ms\n", "proxy.read_timeout",
     "durations are plain numbers of seconds, without a unit: write 0.5"),
    ("# edge\n\n[proxy]\nlisten = \"127.0.0.1:8080\"\nsend_timeout = 2m  # as nginx\n",
     "proxy.send_timeout", "durations are plain numbers of seconds, without a unit: write 120"),
    ("[cors]\nmax_age = 60s\n", "cors.max_age",
     "durations are plain numbers of seconds, without a unit: write 60"),
    ("[cache]\nmax_bytes = 256MiB\n", "cache.max_bytes",
     "a size with a unit is a string: write \"256MiB\""),
    ("[cache]\n  max_object_bytes=8 MB\n", "cache.max_object_bytes",
     "a size with a unit is a string: write \"8 MB\""),
    ("[[routes]]\nhost = \"a\"\nupstream = \"http://127.0.0.1:9\"\n[[routes]]\n"
     "host = \"b\"\nupstream = \"http://127.0.0.1:9\"\n[routes.cache]\nheuristic_max_age = 1h\n",
     "routes[1].cache.heuristic_max_age",
     "durations are plain numbers of seconds, without a unit: write 3600"),
], ids=["ms", "minutes-after-comment", "cors-seconds", "size", "size-with-space", "route"])
def test_a_unit_written_without_quotes_in_the_file_names_the_key_and_what_to_write(
        tmp_path: Path, line: str, key: str, said: str) -> None:
    """What was wrong: the README (Configuration) says a duration with a unit, `"60s"` or
    `500ms`, "is refused with the number to write". Through the environment it is; but in
    the TOML file, where an nginx or systemd user writes `read_timeout = 500ms` or
    `max_bytes = 256MiB` unquoted, tomllib refuses the line first, and the user saw only
    `config error: FILE: invalid TOML: Expected newline or end of document after a
    statement (at line 2, column 19)`: no key named (DESIGN: "errors that name the key and
    the reason"), nothing saying what to write. Now such a line is refused naming its key
    (`proxy.read_timeout`), the value, the file and line, and what to write: the number
    of seconds, or for a size the same text quoted. Severity: low (a start refused with a
    confusing line, on a common first edit)."""
    error = load_error(tmp_path, line)
    assert error.key == key
    assert said in error.reason
    assert "cacheproxy.toml, line " in error.reason


def test_other_invalid_toml_is_still_said_as_tomllib_says_it(tmp_path: Path) -> None:
    """Guard for the fix above: a TOML mistake that is no number with a unit keeps
    tomllib's own message, with the file named as before."""
    error = load_error(tmp_path, "[proxy]\nvia = \n")
    assert error.reason == "invalid TOML: Invalid value (at line 2, column 7)"
    for text in ("[proxy]\nread_timeout = 5 5\n", "[proxy]\nvia = cache1\n",
                 "[proxy]\nworkers = 2x\n", "[[routes]]\nhost = \"a\"\nmax_age = 5s\n"):
        error = load_error(tmp_path, text)  # (not a number setting, or no section's key)
        assert error.reason.startswith("invalid TOML: "), text


def test_serve_with_an_unquoted_duration_exits_2_naming_the_key(tmp_path: Path) -> None:
    """The same mistake through `cacheproxy serve --config FILE`, as a user runs it: one
    line naming the key, exit 2 (README, Exit status), nothing started."""
    (tmp_path / "c.toml").write_text("[proxy]\nread_timeout = 500ms\n", encoding="utf-8")
    done = subprocess.run([sys.executable, "-m", "cacheproxy", "serve", "--config", "c.toml"],
                          cwd=tmp_path, env=clean_env(), capture_output=True, text=True,
                          timeout=30, stdin=subprocess.DEVNULL)
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr == (
        "cacheproxy: config error: proxy.read_timeout: expected a number, got 500ms "
        "(c.toml, line 2); durations are plain numbers of seconds, without a unit: "
        "write 0.5\n")
