"""An operator's review (install, configure, run, reload, monitor): what the README promises
an operator, checked on a real `cacheproxy` process where it takes one. Each test names the
behaviour expected and why."""

from __future__ import annotations

import contextlib
import gzip
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from processes import clean_env, free_port

REPO = Path(__file__).resolve().parent.parent


def cacheproxy(*args: str, cwd: Path, env: dict[str, str] | None = None,
               timeout: float = 30, stdin: bytes | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "cacheproxy", *args], cwd=cwd, capture_output=True,
        timeout=timeout, input=stdin,
        env={**clean_env(PYTHONPATH=str(REPO)), **(env or {})})


# --- reload / stop and the pid file ------------------------------------------------------------


def test_reload_does_not_signal_a_process_that_is_not_cacheproxy(tmp_path):
    """A pid file left behind by a server that died (SIGKILL, OOM, a power cut) may name a
    pid the system has since given to another program. README: with "a stale file they say
    so in one line and exit 1". `reload` must not send SIGHUP (whose default action
    terminates) to that program: `serve` already refuses to treat such a pid as a running
    cacheproxy (pidfile.claim), `reload` and `stop` must too."""
    other = subprocess.Popen(["sleep", "60"])
    try:
        pid_file = tmp_path / "cacheproxy.pid"
        pid_file.write_text(f"{other.pid}\n")
        done = cacheproxy("reload", cwd=tmp_path,
                          env={"CACHEPROXY_PROXY_PID_FILE": str(pid_file)})
        time.sleep(0.2)
        assert other.poll() is None, "reload killed an unrelated process with SIGHUP"
        assert done.returncode == 1
        assert done.stderr.decode().count("\n") == 1
    finally:
        other.kill()
        other.wait()


@pytest.mark.parametrize("command", ["reload", "stop"])
def test_a_pid_file_that_is_a_directory_is_one_line_not_a_traceback(tmp_path, command):
    """CLI: "Mistakes the user can fix are one line on stderr and an exit status, never a
    traceback". proxy.pid_file naming a directory (a typo: "/run/cacheproxy/") made
    `reload` and `stop` print a traceback (IsADirectoryError from reading it)."""
    done = cacheproxy(command, cwd=tmp_path, env={"CACHEPROXY_PROXY_PID_FILE": str(tmp_path)})
    err = done.stderr.decode()
    assert done.returncode == 1
    assert "Traceback" not in err
    assert err.count("\n") == 1 and "proxy.pid_file" in err


# --- start errors -------------------------------------------------------------------------------


def test_a_log_file_that_cannot_be_opened_names_log_path(tmp_path):
    """DESIGN: "Config mistakes stop the start with a message naming the key". A log.path
    in a directory that does not exist stopped the start with `cacheproxy: [Errno 2] No
    such file or directory: '...'`, naming no setting (proxy.pid_file's does)."""
    done = cacheproxy("serve", "--listen", f"127.0.0.1:{free_port()}", "--upstream",
                      "http://127.0.0.1:9", "--log-file", str(tmp_path / "no" / "x.log"),
                      cwd=tmp_path)
    err = done.stderr.decode()
    assert done.returncode == 1
    assert err.startswith("cacheproxy: log.path:") and err.count("\n") == 1, err


def test_workers_that_cannot_start_say_why_in_a_few_lines(tmp_path):
    """With --workers, a start error a worker meets (a log.path it cannot open, an
    admin.listen address in use) printed a full traceback from every worker the supervisor
    started and restarted (some 200 lines) before "workers keep dying at start; giving up".
    It should say the reason as one line, as a single process does, with exit status 1,
    and not restart workers that cannot start."""
    done = cacheproxy("serve", "--listen", f"127.0.0.1:{free_port()}", "--upstream",
                      "http://127.0.0.1:9", "--workers", "2",
                      "--log-file", str(tmp_path / "no" / "x.log"), cwd=tmp_path)
    err = done.stderr.decode()
    assert done.returncode == 1
    assert "Traceback" not in err, err
    assert "log.path" in err
    assert len(err.splitlines()) <= 6, err


# --- cacheproxy logs ----------------------------------------------------------------------------

LINE = ('{"time":"2026-11-23T17:32:24.676Z","client":"127.0.0.1","method":"GET",'
        '"host":"127.0.0.1:8080","path":"/max-age","status":200,"cache":"HIT","bytes":66,'
        '"total_ms":0.167,"age":0,"ttl":59,"upstream_status":null,"upstream_ms":null,'
        '"collapsed":false,"route":"default","policy":null,"protocol":"HTTP/1.1",'
        '"referer":null,"user_agent":"curl/7.88.1","cache_status":"cacheproxy; hit; ttl=59"}\n')


def test_logs_reads_a_log_rotated_with_compress(tmp_path):
    """logrotate's `compress` leaves access.log.2.gz beside access.log.1; `cacheproxy logs
    access.log.2.gz` reported "requests 0 (lines 3, malformed 3)", a silently wrong summary
    (the gzip bytes read as text). It should read the compressed log (as zgrep, GoAccess and
    lnav do), or at least refuse it saying so; here it reads it."""
    rotated = tmp_path / "access.log.2.gz"
    rotated.write_bytes(gzip.compress((LINE * 5).encode()))
    done = cacheproxy("logs", "--json", str(rotated), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["requests"] == 5
    assert report["lines"]["malformed"] == 0


# --- admin API ----------------------------------------------------------------------------------


@pytest.mark.parametrize("scheme", ["bearer", "BEARER", "Bearer "])
async def test_admin_token_scheme_is_case_insensitive(proxy, scheme):
    """RFC 9110 §11.1: the authentication scheme is a case-insensitive token, so
    `Authorization: bearer s3cret` carries the token as `Bearer s3cret` does (some clients
    and scrapers write the scheme in lower case). It got 401. §11.4: credentials =
    auth-scheme [ 1*SP ...]: more than one space after it too."""
    client = await proxy("http://127.0.0.1:9", admin={"token": "s3cret"})
    resp = await client.get("/_cacheproxy/stats", headers={"Authorization": f"{scheme} s3cret"})
    assert resp.status == 200
    wrong = await client.get("/_cacheproxy/stats", headers={"Authorization": f"{scheme} nope"})
    assert wrong.status == 401


# --- --workers ----------------------------------------------------------------------------------


def _children(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rpartition(")")[2].split()
            except OSError:
                continue
            if int(fields[1]) == pid and fields[0] != "Z":
                found.append(int(entry))
    return found


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[0] != "Z"
    except OSError:
        return False


def test_workers_stop_when_their_supervisor_is_killed(tmp_path):
    """With --workers, a supervisor killed by SIGKILL (`kill -9` of the pid file's pid, an
    OOM kill, a service manager's stop timeout that signals the main pid only) left its
    workers running as orphans: they kept the port, so the next `cacheproxy serve` failed
    with "address already in use" and nothing supervised them any more. Workers should
    stop (gracefully) when their supervisor is gone, as gunicorn's do."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "cacheproxy", "serve", "--listen", f"127.0.0.1:{port}",
         "--upstream", "http://127.0.0.1:9", "--workers", "2"],
        cwd=tmp_path, env=clean_env(PYTHONPATH=str(REPO), CACHEPROXY_LOG_FORMAT="off",
                                    CACHEPROXY_PROXY_SHUTDOWN_TIMEOUT="1"),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 15
        while len(workers := _children(proc.pid)) < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert len(workers) == 2
        time.sleep(1)  # serving
        proc.kill()
        proc.wait()
        deadline = time.monotonic() + 10
        while any(map(_alive, workers)) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not any(map(_alive, workers)), "workers outlived their supervisor"
    finally:  # its own process group: the supervisor and any orphaned worker
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)


# --- the request log ----------------------------------------------------------------------------


def test_a_log_that_cannot_be_written_is_said_once_not_per_batch(tmp_path):
    """When the request log cannot be written (its pipe's reader is gone, e.g. `cacheproxy
    serve | head`, or the disk is full), the proxy serves on (right), but wrote one stderr
    line per batch of log lines (up to 20 a second: 72,000 an hour into the journal or
    docker's log, often on that same full disk). Said once, then at most once a minute
    with the count of lines lost, as the stalled-writer case is."""
    import urllib.request

    port = free_port()
    read_end, write_end = os.pipe()
    proc = subprocess.Popen(
        [sys.executable, "-m", "cacheproxy", "serve", "--listen", f"127.0.0.1:{port}",
         "--upstream", "http://127.0.0.1:9"],
        cwd=tmp_path, env=clean_env(PYTHONPATH=str(REPO)), stdout=write_end,
        stderr=subprocess.PIPE)
    os.close(write_end)
    try:
        for _ in range(200):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/_cacheproxy/healthz")
                break
            except OSError:
                time.sleep(0.05)
        os.close(read_end)  # the reader goes away
        for i in range(15):
            with contextlib.suppress(OSError):  # 502: no origin; the log line is the point
                urllib.request.urlopen(f"http://127.0.0.1:{port}/{i}")
            time.sleep(0.07)  # a batch each
        assert proc.poll() is None  # it serves on
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=20)
    complaints = [line for line in err.decode().splitlines() if "request log" in line]
    assert 1 <= len(complaints) <= 2, complaints


# --- proxy.upstream and proxy.listen as written ------------------------------------------------


def test_upstream_password_is_not_written_to_the_log(tmp_path):
    """An upstream URL with userinfo (http://user:secret@host) is sent as Basic credentials
    to the origin (proxy/exchange.py), but the start logged the URL whole ("listening on
    ... -> http://user:secret@...", and the unreachable-upstream warning): a password in
    the process log (journald, docker logs), as redis_url's would not be. The log should
    show the URL with its password masked."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "cacheproxy", "serve", "--listen", f"127.0.0.1:{port}",
         "--upstream", "http://user:s3cretpw@127.0.0.1:9"],
        cwd=tmp_path, env=clean_env(PYTHONPATH=str(REPO), CACHEPROXY_LOG_FORMAT="off"),
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        time.sleep(2.5)
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=20)
    text = err.decode()
    assert "listening on" in text
    assert "s3cretpw" not in text, text


def test_listen_with_a_scheme_says_so(tmp_path):
    """`--listen http://127.0.0.1:8080` (an easy slip beside --upstream's URL) was refused
    with "an IPv6 address needs brackets", which sends the operator the wrong way. The
    message should say a listen address takes no scheme."""
    done = cacheproxy("serve", "--listen", "http://127.0.0.1:8080", "--upstream",
                      "http://127.0.0.1:9", cwd=tmp_path)
    err = done.stderr.decode()
    assert done.returncode == 2
    assert "IPv6" not in err and "scheme" in err, err
