"""Third reading of the last merges (review-third8): the unquoted-unit finder in the config
loader (config/unquoted_units.py), the pid file's flock claim and release (pidfile.py),
per-variant request collapsing with LEADER_LEFT (proxy/collapse.py, driver.py; with the
memory store, Redis alone and Redis behind its memory layer, where a defect of the layer
showed) and the 499 for a client that left before its answer began (client_conn.py;
pipelined requests, HEAD, full and quick paths: found right, no test here). Each test
says what was wrong, what a user saw, and how bad it was; each failed before its fix."""

from __future__ import annotations

import asyncio
import fcntl
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from processes import clean_env
from test_config import load_error


@pytest.mark.parametrize(("text", "key", "line"), [
    ("[proxy]\n# note\u2028connect_timeout = 5s\nread_timeout = 500ms\n",
     "proxy.read_timeout", 3),
    ("[proxy]\nvia = \"a\u0085b\"\nconnect_timeout = 5s\n", "proxy.connect_timeout", 3),
    ("[cache]\nmax_bytes = \"1MiB\"\n[\"proxy\"]\nread_timeout = 500ms\n",
     "proxy.read_timeout", 4),
    ("[proxy]\r\nread_timeout = 500ms # as nginx\r\n", "proxy.read_timeout", 2),
    ("[proxy]\nread_timeout = 5\nread_timeout = 500ms\n", "proxy.read_timeout", 3),
], ids=["u2028-in-comment", "nel-in-string", "quoted-header", "crlf", "said-twice"])
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
    error = load_error(tmp_path, text)
    assert error.key == key
    assert f"cacheproxy.toml, line {line})" in error.reason


def test_a_route_table_without_routes_array_names_no_routes_minus_one(tmp_path: Path) -> None:
    """What was wrong: `[routes.cache]` with no `[[routes]]` above (routes a table, not
    the array of routes) was named `routes[-1].cache.max_bytes`: an index no route has.
    Now it is left to tomllib's message. Severity: low."""
    error = load_error(tmp_path, "[routes.cache]\nmax_bytes = 256MiB\n")
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


def _run(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    # A hang guard: each of these commands answers at once when right.
    return subprocess.run([sys.executable, "-m", "cacheproxy", *args], cwd=tmp_path,
                          env=clean_env(), capture_output=True, text=True, timeout=30,
                          stdin=subprocess.DEVNULL)


def test_a_fifo_at_the_pid_file_path_is_refused_not_waited_on(tmp_path: Path) -> None:
    """What was wrong: the claim opened the pid file for reading with a plain open(), and
    `stop`/`reload` read it with Path.read_text(): with a FIFO at the path (a mistaken
    `mkfifo`, or a path meant for a log pipe) both block until some writer comes. A user
    saw `cacheproxy serve` print nothing and never listen, with SIGTERM and Ctrl-C held
    (serve blocks them before the claim): only SIGKILL ended it; `cacheproxy stop` hung
    too. Now anything but a regular file is refused at once: `proxy.pid_file: cannot
    write PATH: not a regular file` (exit 1), and `stop` says it cannot read it.
    Severity: medium (a start that hangs unkillably on one wrong setting)."""
    fifo = tmp_path / "cacheproxy.pid"
    os.mkfifo(fifo)
    (tmp_path / "c.toml").write_text(
        f'[proxy]\nlisten = "127.0.0.1:0"\npid_file = "{fifo}"\n'
        'upstream = "http://127.0.0.1:9"\n[log]\nformat = "off"\n', encoding="utf-8")
    done = _run(tmp_path, "serve", "--config", "c.toml")
    assert done.returncode == 1, done.stderr
    assert f"proxy.pid_file: cannot write {fifo}: not a regular file" in done.stderr
    done = _run(tmp_path, "stop", "--config", "c.toml")
    assert done.returncode != 0
    assert f"cannot read {fifo}: not a regular file" in done.stderr


def test_a_pid_file_locked_by_another_process_forever_is_said_not_waited_on(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """What was wrong: the claim waited for the pid file's flock without bound. A process
    holding it (a stuck start, or any program that flocks that path) held `serve` before
    it listened, printing nothing, with SIGTERM and Ctrl-C blocked: an operator saw a
    start that neither served nor could be stopped but by SIGKILL. A claim or release
    holds the lock for a read and a write, so a bounded wait loses nothing: now the
    start is refused naming the file and the pid holding the lock (from /proc/locks).
    Here the bound is shortened (5 s in serve) and the lock held by this process's own
    second descriptor. Severity: medium."""
    from cacheproxy import pidfile
    from cacheproxy.lifetime import StartError

    monkeypatch.setattr(pidfile, "_CLAIM_WAIT", 0.2)
    path = tmp_path / "cacheproxy.pid"
    holder = os.open(path, os.O_RDONLY | os.O_CREAT)
    try:
        fcntl.flock(holder, fcntl.LOCK_EX)
        with pytest.raises(StartError) as info:
            pidfile.claim(str(path), 1.0)
    finally:
        os.close(holder)
    assert f"{path} is locked by another process (pid {os.getpid()})" in str(info.value)
    assert path.read_text() == ""  # nothing written past the lock


async def test_a_read_of_redis_that_a_put_overtakes_does_not_hide_the_put_from_the_front(
        redis_server: Any) -> None:
    """What was wrong: the memory layer in front of Redis (the default with store =
    "redis") filled itself from each read of Redis, and a put bumps no generation. A read
    of a key begun before this replica stored a new variant, and ended after, filled the
    front with what it had read (without the new variant) and marked it in step with
    Redis for memory_layer_ttl. Found by many concurrent misses for one key known to vary
    (per-variant collapsing): now and then the waiters of a stored variant looked up,
    missed it in the front, and went to the origin again (32 upstream requests for 30
    variants); any request for that variant meanwhile was a needless miss. Now a read
    that a put of its key overtook does not fill the front. Here the read is held between
    its Redis answer and its fill (the test's wrapper of back.get), deterministically.
    Severity: low-medium (duplicate origin fetches under load; a replica's own write
    missing from its own front for up to memory_layer_ttl)."""
    from test_store_redis import make_entry, redis_cache

    from cacheproxy.store import LayeredStore, build_store

    store = build_store(redis_cache(redis_server, memory_layer_ttl=60))
    assert isinstance(store, LayeredStore)
    await store.start()
    try:
        old = make_entry(vary=("Accept-Language",), values=("en",), body=b"en")
        new = make_entry(vary=("Accept-Language",), values=("fr",), body=b"fr")
        assert await store.put(old)
        await store._forget(old.key)  # (only Redis knows the key now)
        read, release = asyncio.Event(), asyncio.Event()
        back_get = store.back.get

        async def held_get(key: str, headers: Any = None) -> Any:
            variants = await back_get(key, headers)
            read.set()
            await release.wait()
            return variants

        store.back.get = held_get  # type: ignore[method-assign]
        reading = asyncio.ensure_future(store.get(old.key))
        await asyncio.wait_for(read.wait(), 5)
        store.back.get = back_get  # type: ignore[method-assign]
        assert await store.put(new)  # overtakes the read
        release.set()
        assert [v.body for v in await reading] == [b"en"]  # (what it read)
        assert sorted(v.body for v in await store.get(old.key)) == [b"en", b"fr"]
    finally:
        await store.close()


def test_a_pid_file_replaced_by_a_fifo_or_directory_while_serving_does_not_fail_the_exit(
        tmp_path: Path) -> None:
    """What was wrong: release() (at serve's exit) read the pid file with no guard but for
    a missing file: one replaced while the server ran by a directory raised
    IsADirectoryError out of serve's exit (a traceback after a clean stop), and by a FIFO
    blocked the exit until a writer came (before the fix above) or raised. Now what is
    no pid file is left alone and the exit goes on. Severity: low."""
    from cacheproxy import pidfile

    for make in (os.mkfifo, os.mkdir):
        path = tmp_path / f"p-{make.__name__}.pid"
        pidfile.claim(str(path), 1.0)
        path.unlink()
        make(path)
        pidfile.release(str(path))  # (no exception, no wait)
        assert path.exists()
        assert not Path(pidfile.running_file(str(path))).exists()
