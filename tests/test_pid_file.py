"""proxy.pid_file with `cacheproxy reload` and `cacheproxy stop` (issue 13, item 4): a real
`cacheproxy serve`, signalled through the file its config names, as `nginx -s reload`."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from processes import clean_env, start_serve, stop

from cacheproxy import pidfile


async def cli(*args: str, cwd: Path) -> tuple[int, str, str]:
    """`cacheproxy ARGS...` without blocking the loop the test's origin runs on."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "cacheproxy", *args, cwd=cwd, env=clean_env(),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 20)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def via_origin(origin: object) -> str:
    async def ok(request: web.Request) -> web.Response:
        return web.Response(text="ok", headers={"Cache-Control": "no-store"})

    app = web.Application()
    app.router.add_get("/", ok)
    return str((await origin(app)).make_url("")).rstrip("/")  # type: ignore[operator]


def write_config(path: Path, pid_file: Path, via: str, upstream: str) -> None:
    path.write_text(f'[proxy]\npid_file = "{pid_file}"\nvia = "{via}"\n'
                    f'upstream = "{upstream}"\n[log]\nformat = "off"\n')


async def via_header(port: int) -> str:
    async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{port}/") as resp:
        assert resp.status == 200
        return resp.headers["Via"]


async def test_reload_and_stop_signal_the_process_the_pid_file_names(origin, tmp_path):
    upstream = await via_origin(origin)
    config, pid_file = tmp_path / "cacheproxy.toml", tmp_path / "run" / "cacheproxy.pid"
    pid_file.parent.mkdir()
    write_config(config, pid_file, "before", upstream)
    proc, port = await start_serve("--config", str(config), cwd=tmp_path)
    assert pid_file.read_text() == f"{proc.pid}\n"  # written by the time it listens
    # Beside it, what `stop` needs of this server (its shutdown_timeout is restart-only).
    running = Path(f"{pid_file}.json")
    assert json.loads(running.read_text()) == {"pid": proc.pid, "shutdown_timeout": 8.0}
    assert await via_header(port) == "1.1 before"

    write_config(config, pid_file, "after", upstream)
    code, out, err = await cli("reload", "--config", str(config), cwd=tmp_path)
    assert (code, err) == (0, "")
    assert f"sent SIGHUP to pid {proc.pid}" in out
    for _ in range(100):
        if await via_header(port) == "1.1 after":
            break
        await asyncio.sleep(0.05)
    assert await via_header(port) == "1.1 after"

    code, out, err = await cli("stop", "--config", str(config), cwd=tmp_path)
    assert (code, err) == (0, "")
    assert out == f"cacheproxy: stop: pid {proc.pid} has exited\n"
    assert await asyncio.wait_for(proc.wait(), 5) == 0
    assert not pid_file.exists() and not running.exists()
    _, log = await stop(proc)
    assert "configuration reloaded" in log and "Traceback" not in log


async def test_reload_checks_the_config_first_and_leaves_the_server_alone(origin, tmp_path):
    upstream = await via_origin(origin)
    config, pid_file = tmp_path / "cacheproxy.toml", tmp_path / "cacheproxy.pid"
    write_config(config, pid_file, "kept", upstream)
    proc, port = await start_serve("--config", str(config), cwd=tmp_path)
    config.write_text(config.read_text() + '[cache]\nmax_bytes = "lots"\n')
    code, out, err = await cli("reload", "--config", str(config), cwd=tmp_path)
    assert code == 2 and out == ""
    assert err.startswith("cacheproxy: config error: cache.max_bytes: ")
    assert await via_header(port) == "1.1 kept"
    code, log = await stop(proc)
    assert code == 0 and "reload" not in log  # it was never signalled
    assert not pid_file.exists()


async def test_with_workers_the_file_names_the_supervising_parent(origin, tmp_path):
    upstream = await via_origin(origin)
    config, pid_file = tmp_path / "cacheproxy.toml", tmp_path / "cacheproxy.pid"
    write_config(config, pid_file, "w", upstream)
    proc, port = await start_serve("--config", str(config), "--workers", "2", cwd=tmp_path)
    assert pid_file.read_text() == f"{proc.pid}\n"
    assert pidfile.running_shutdown_timeout(str(pid_file), proc.pid) == 8.0
    assert await via_header(port) == "1.1 w"
    code, out, _ = await cli("stop", "--config", str(config), cwd=tmp_path)
    assert code == 0 and f"pid {proc.pid} has exited" in out
    assert await asyncio.wait_for(proc.wait(), 5) == 0
    assert not pid_file.exists()


async def test_a_second_server_with_the_same_pid_file_is_refused(origin, tmp_path):
    upstream = await via_origin(origin)
    config, pid_file = tmp_path / "cacheproxy.toml", tmp_path / "cacheproxy.pid"
    write_config(config, pid_file, "first", upstream)
    proc, _ = await start_serve("--config", str(config), cwd=tmp_path)
    second = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "cacheproxy", "serve", "--config", str(config), "--listen",
        "127.0.0.1:0", cwd=tmp_path, env=clean_env(), stderr=asyncio.subprocess.PIPE)
    _, err = await asyncio.wait_for(second.communicate(), 20)
    assert second.returncode == 1
    assert err.decode() == (
        f"cacheproxy: proxy.pid_file: {pid_file} names pid {proc.pid}, a cacheproxy that is "
        "running; stop it first (cacheproxy stop) or give this one another pid_file\n")
    assert pid_file.read_text() == f"{proc.pid}\n"  # still the first one's
    assert (await stop(proc))[0] == 0


def test_reload_and_stop_say_why_there_is_nothing_to_signal(tmp_path: Path) -> None:
    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "cacheproxy", *args], cwd=tmp_path,
                              env=clean_env(), capture_output=True, text=True, timeout=20)

    no_key = run("reload")
    assert no_key.returncode == 1 and no_key.stdout == ""
    assert no_key.stderr.startswith("cacheproxy: reload: proxy.pid_file is not set, ")

    pid_file = tmp_path / "cacheproxy.pid"
    config = tmp_path / "c.toml"
    config.write_text(f'[proxy]\npid_file = "{pid_file}"\n')
    missing = run("stop", "--config", str(config))
    assert missing.returncode == 1
    assert missing.stderr == (f"cacheproxy: stop: proxy.pid_file: {pid_file} does not exist: "
                              "is cacheproxy serve running with this configuration?\n")

    gone = subprocess.Popen(["true"])
    gone.wait()
    pid_file.write_text(f"{gone.pid}\n")
    stale = run("reload", "--config", str(config))
    assert stale.returncode == 1
    assert stale.stderr == (f"cacheproxy: reload: proxy.pid_file: {pid_file} names pid "
                            f"{gone.pid}, which is not running (the file is stale: the server "
                            "did not exit cleanly)\n")


@pytest.mark.parametrize("said", [
    '{"pid": OTHER, "shutdown_timeout": 30}',   # an earlier server's, not cleaned up
    '{"pid": PID, "shutdown_timeout": -1}', '{"pid": PID, "shutdown_timeout": true}',
    '{"pid": PID, "shutdown_timeout": Infinity}', '{"pid": PID, "shutdown_timeout": NaN}',
    '{"pid": PID}', '[PID, 30]', 'PID 30', ''])
def test_stop_uses_the_running_shutdown_timeout_only_from_this_servers_own_file(
        tmp_path: Path, said: str) -> None:
    """`stop` waits for the shutdown_timeout the running server started with, read from
    `<pid_file>.json`; a file naming another pid (left by a server that did not exit
    cleanly) or not saying a number of seconds is not trusted: the config file's value
    is used, as before the file existed (a server of an older version writes none)."""
    pid_file = tmp_path / "cacheproxy.pid"
    own = pidfile.running_file(str(pid_file))
    Path(own).write_text(said.replace("OTHER", str(os.getpid() + 1))
                         .replace("PID", str(os.getpid())))
    assert pidfile.running_shutdown_timeout(str(pid_file), os.getpid()) is None
    pidfile.claim(str(pid_file), 2.5)
    assert pidfile.running_shutdown_timeout(str(pid_file), os.getpid()) == 2.5
    assert pid_file.read_text() == f"{os.getpid()}\n"  # still a bare pid
    pidfile.release(str(pid_file))
    assert not pid_file.exists() and not Path(own).exists()


_RACER = """
import sys, time
from cacheproxy import pidfile
from cacheproxy.lifetime import StartError
path, go = sys.argv[1], float(sys.argv[2])
pidfile._is_cacheproxy = lambda pid: True  # (each racer takes the other for a server)
write = pidfile._write
def slow_write(target, text):  # widen the window between the check and the write
    time.sleep(0.3)
    write(target, text)
pidfile._write = slow_write
time.sleep(max(0.0, go - time.time()))  # both start the claim at the same moment
try:
    pidfile.claim(path, 8.0)
except StartError as exc:
    print("refused", exc)
    sys.exit(3)
print("claimed")
time.sleep(1.5)  # running, as a server would be, while the other checks
"""


def test_two_servers_claiming_one_pid_file_at_the_same_moment_are_not_both_let_run(
        tmp_path: Path) -> None:
    """pidfile.claim read the file, then wrote it: two `serve` started at the same moment
    with one pid_file could both read it free and both run, the file naming only the
    last (one of them then out of reach of `stop` and `reload`, and both on the port
    with SO_REUSEPORT). The read and the write are now one step under an flock of the
    file. Here each claim waits 0.3 s between its check and its write: before, both
    claimed; now one is refused, naming the other's pid. Severity: low (a start race)."""
    path = tmp_path / "cp.pid"
    go = f"{time.time() + 1.0}"
    racers = [subprocess.Popen([sys.executable, "-c", _RACER, str(path), go],
                               env=clean_env(), stdout=subprocess.PIPE, text=True)
              for _ in range(2)]
    outs = [r.communicate(timeout=30)[0] for r in racers]
    codes = sorted(r.returncode for r in racers)
    assert codes == [0, 3], outs
    winner = racers[[r.returncode for r in racers].index(0)]
    loser_out = outs[[r.returncode for r in racers].index(3)]
    assert f"names pid {winner.pid}" in loser_out
