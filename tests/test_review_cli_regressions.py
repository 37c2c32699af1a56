"""Regression tests from a review of the command line as an operator scripting it reads it:
`cacheproxy serve|demo|reload|stop|logs|ca`, their flags, exit codes and one-line errors,
the config file and CACHEPROXY_* environment variables, and the pid file's lifecycle
(stale files, reused pids, two servers, signals). Each runs the real `python -m cacheproxy`
as a subprocess, and each showed a defect."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from processes import clean_env, free_port


def cacheproxy(*args: str, cwd: Path, env: dict[str, str] | None = None,
               ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cacheproxy", *args], cwd=cwd,
                          env=env if env is not None else clean_env(), capture_output=True,
                          text=True, timeout=30, stdin=subprocess.DEVNULL)


# -- the pid file: a stale file's pid reused by a program that merely mentions cacheproxy ---------

@pytest.fixture
def bystander(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    """A process an operator has running whose command line mentions cacheproxy without
    being a server: `tail -f .../cacheproxy.log`, or `cacheproxy logs --follow`."""
    log = tmp_path / "cacheproxy.log"
    log.write_text("")
    argv = {"tail": ["tail", "-f", str(log)],
            "logs": [sys.executable, "-m", "cacheproxy", "logs", "--follow", str(log)],
            }[request.param]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            stdin=subprocess.DEVNULL, env=clean_env())
    yield proc
    proc.kill()
    proc.wait()


@pytest.mark.parametrize("bystander", ["tail", "logs"], indirect=True)
def test_a_stale_pid_file_never_signals_a_process_that_only_mentions_cacheproxy(
        bystander: subprocess.Popen[bytes], tmp_path: Path) -> None:
    """What was wrong: a pid was taken for a running server when its command line merely
    contained "cacheproxy". A server killed by SIGKILL or an OOM leaves its pid file; once
    the pid is reused by `tail -f /var/log/cacheproxy.log`, `less cacheproxy.toml` or a
    `cacheproxy logs --follow`, `cacheproxy stop` sent that process SIGTERM, waited for it
    to die and printed "pid N has exited" (exit 0), and `cacheproxy reload` killed it with
    SIGHUP; a new `serve` given the file refused to start ("a cacheproxy that is running").
    The README promises a pid another program has since "is never signalled".
    Peers: nginx -s and start-stop-daemon --pidfile check the process, not a substring
    (start-stop-daemon: --exec / --name). Severity: medium (an operator's unrelated process
    killed by a routine `stop`; a restart script cannot start the server)."""
    pid_file = tmp_path / "cacheproxy.pid"
    pid_file.write_text(f"{bystander.pid}\n")
    env = clean_env(CACHEPROXY_PROXY_PID_FILE=str(pid_file))
    for command in ("stop", "reload"):
        done = cacheproxy(command, cwd=tmp_path, env=env)
        assert done.returncode == 1, done
        assert done.stdout == ""
        assert done.stderr == (
            f"cacheproxy: {command}: proxy.pid_file: {pid_file} names pid {bystander.pid}, "
            "which is not a cacheproxy (the file is stale: the server did not exit cleanly, "
            "and the pid was reused)\n")
        assert bystander.poll() is None  # never signalled
    # and a server given that file starts, taking it over (and removes it as it exits)
    port = free_port()
    serve = subprocess.Popen(
        [sys.executable, "-m", "cacheproxy", "serve", "--listen", f"127.0.0.1:{port}",
         "--upstream", "http://127.0.0.1:9"], cwd=tmp_path, env=env,
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
    try:
        stopped = cacheproxy("stop", cwd=tmp_path, env=env)
        while stopped.returncode == 1 and "not a cacheproxy" in stopped.stderr \
                and serve.poll() is None:  # the file still names the bystander: not yet claimed
            stopped = cacheproxy("stop", cwd=tmp_path, env=env)
        _, err = serve.communicate(timeout=30)
    finally:
        serve.kill()
    assert serve.returncode == 0, err
    assert stopped.returncode == 0, stopped
    assert stopped.stdout == f"cacheproxy: stop: pid {serve.pid} has exited\n"
    assert bystander.poll() is None
    assert not pid_file.exists()


# -- the pid file is written before the server handles the signals it is written for -------------

@pytest.mark.parametrize("sig", [signal.SIGHUP, signal.SIGTERM], ids=["SIGHUP", "SIGTERM"])
def test_a_signal_sent_as_soon_as_the_pid_file_appears_is_handled_not_fatal(
        tmp_path: Path, sig: signal.Signals) -> None:
    """What was wrong: `serve --workers N` wrote its pid file, then started the demo origin
    (or bound the port) and only then installed its SIGHUP and SIGTERM handlers. A script
    that waits for the pid file and then signals it (`until [ -s $PIDFILE ]; do sleep 0.1;
    done; kill -HUP $(cat $PIDFILE)`, a logrotate postrotate, a deploy's reload right
    after a start) killed the supervisor by the signal's default action: exit 129 on a
    SIGHUP with nothing logged, a SIGTERM ended it without the graceful stop, and the pid
    file stayed behind, stale. nginx writes its pid file once its signal handlers are set.
    Now the signals are held from before the file is written until they are handled: a
    SIGHUP is a reload, a SIGTERM a graceful stop (exit 0, pid file removed).
    Severity: medium (a routine reload right after a start takes the server down)."""
    pid_file = tmp_path / "cacheproxy.pid"
    env = clean_env(CACHEPROXY_PROXY_PID_FILE=str(pid_file),
                    CACHEPROXY_DEMO_LISTEN=f"127.0.0.1:{free_port()}")
    serve = subprocess.Popen(
        [sys.executable, "-m", "cacheproxy", "serve", "--workers", "2", "--listen",
         f"127.0.0.1:{free_port()}"], cwd=tmp_path, env=env, start_new_session=True,
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 20
        while not pid_file.exists() or not pid_file.read_text().endswith("\n"):
            assert serve.poll() is None and time.monotonic() < deadline
            time.sleep(0.001)
        os.kill(serve.pid, sig)
        if sig == signal.SIGHUP:  # a reload: it keeps serving, then stops when told to
            stopped = cacheproxy("stop", cwd=tmp_path, env=env)
            assert stopped.returncode == 0, stopped
        _, err = serve.communicate(timeout=30)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(serve.pid, signal.SIGKILL)
    assert serve.returncode == 0, err
    assert not pid_file.exists()


# -- standard streams closed by the script that starts it ------------------------------------------

def _listening(port: int, proc: subprocess.Popen[bytes], seconds: float = 20) -> None:
    deadline = time.monotonic() + seconds
    while True:
        assert proc.poll() is None, f"serve exited {proc.returncode}"
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            assert time.monotonic() < deadline, "serve did not start listening"
            time.sleep(0.05)


@pytest.mark.parametrize("closed", ["<&-", ">&-", "2>&-"], ids=["stdin", "stdout", "stderr"])
@pytest.mark.parametrize("workers", ["1", "2"])
def test_serve_started_with_a_standard_stream_closed_serves_and_stops_cleanly(
        tmp_path: Path, closed: str, workers: str) -> None:
    """What was wrong: `serve` started with fd 0, 1 or 2 closed (`cacheproxy serve <&- >&-`,
    `exec <&-` in an init script, a daemonizing wrapper) let its first socket take that
    number. With stdin closed it served, then aborted at SIGTERM (exit 134: libuv's
    `uv__close: Assertion fd > STDERR_FILENO`); with stdout closed it aborted at once (134,
    or, with --workers, a traceback per worker and exit 1); with stderr closed it exited 1
    without a word. A request log written to fd 1 could have gone into a client's
    connection. Now a closed fd 0-2 gets /dev/null at start (as OpenSSH's sanitise_stdfd;
    nginx gives its daemon /dev/null), with a warning when the request log would go to
    stdout. Severity: medium (the server does not run, or does not stop cleanly, under
    such scripts)."""
    port = free_port()
    serve = subprocess.Popen(
        ["sh", "-c", f'exec "$@" {closed}', "sh", sys.executable, "-m", "cacheproxy",
         "serve", "--listen", f"127.0.0.1:{port}", "--upstream", "http://127.0.0.1:9",
         "--workers", workers],
        cwd=tmp_path, env=clean_env(), start_new_session=True,
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        _listening(port, serve)
        for _ in range(2):  # (with --workers, likely both)
            with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
                conn.sendall(b"GET /x HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
                assert conn.makefile("rb").readline() == b"HTTP/1.1 502 Bad Gateway\r\n"
        serve.send_signal(signal.SIGTERM)
        out, err = serve.communicate(timeout=30)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(serve.pid, signal.SIGKILL)
    assert serve.returncode == 0, err.decode()
    assert b"Traceback" not in err
    if closed == ">&-":
        assert err.startswith(b"cacheproxy: warning: standard output was closed: the "
                              b"request log goes to /dev/null; set log.path (--log-file) to "
                              b"keep it\n")
    else:
        assert out.count(b'"path":"/x"') == 2  # the request log, on stdout
        assert b"standard output was closed" not in err


# -- one-line mistakes that did not say what to write ---------------------------------------------

@pytest.mark.parametrize(("where", "value", "said"), [
    ("env", "5s", "CACHEPROXY_PROXY_CONNECT_TIMEOUT: expected a number, got '5s'; durations "
                  "are plain numbers of seconds, without a unit: write 5"),
    ("file", "500ms", "proxy.connect_timeout: expected a number, got '500ms'; durations are "
                      "plain numbers of seconds, without a unit: write 0.5"),
    ("env", "abc", "CACHEPROXY_PROXY_CONNECT_TIMEOUT: expected a number, got 'abc'"),
])
def test_a_duration_written_with_a_unit_is_refused_saying_how_to_write_it(
        tmp_path: Path, where: str, value: str, said: str) -> None:
    """What was wrong: a timeout written as nginx and systemd write them
    (`CACHEPROXY_PROXY_CONNECT_TIMEOUT=5s`, `read_timeout = "500ms"`) was refused with
    "expected a number, got '5s'", which does not say that seconds are meant nor that the
    unit is the mistake. Now the line says what to write. Peers: nginx takes "5s"; here a
    plain number of seconds is documented, so the refusal stays, with its fix.
    Severity: low (a start refused with a puzzling line)."""
    env = clean_env()
    if where == "env":
        env["CACHEPROXY_PROXY_CONNECT_TIMEOUT"] = value
        args: tuple[str, ...] = ()
    else:
        (tmp_path / "c.toml").write_text(f'[proxy]\nconnect_timeout = "{value}"\n')
        args = ("--config", "c.toml")
    done = cacheproxy("serve", *args, cwd=tmp_path, env=env)
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr == f"cacheproxy: config error: {said}\n"


@pytest.mark.parametrize("command", ["serve", "demo", "reload", "stop", "ca"])
def test_an_empty_config_flag_names_the_flag(tmp_path: Path, command: str) -> None:
    """What was wrong: `--config ""` (a script's `--config "$CONFIG"` with the variable
    unset) said `cacheproxy: config error: : file not found`, naming nothing. Now it names
    the flag and what to give. Severity: low."""
    done = cacheproxy(command, "--config", "", cwd=tmp_path)
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr == ('cacheproxy: config error: --config: an empty file name; give a '
                           "TOML file's path, or leave --config out for "
                           "config/cacheproxy.toml\n")


@pytest.mark.parametrize(("args", "usage", "said"), [
    (("serve", "--listne", "127.0.0.1:1"), "usage: cacheproxy serve [-h] [--config FILE]",
     "cacheproxy serve: error: unrecognized arguments: --listne 127.0.0.1:1 (did you mean "
     "--listen?)"),
    (("stop", "--conifg=c.toml"), "usage: cacheproxy stop [-h] [--config FILE]",
     "cacheproxy stop: error: unrecognized arguments: --conifg=c.toml (did you mean "
     "--config?)"),
    (("logs", "a.log", "b.log"), "usage: cacheproxy logs [-h] [--since TIME]",
     "cacheproxy logs: error: unrecognized arguments: b.log"),
], ids=["serve", "stop", "logs"])
def test_an_unknown_flag_is_refused_with_its_subcommands_usage(
        tmp_path: Path, args: tuple[str, ...], usage: str, said: str) -> None:
    """What was wrong: an unknown flag given to a subcommand (`cacheproxy serve --listne
    ...`, a typo) was refused by the top-level parser, with its usage line
    `usage: cacheproxy [-h] [--version] COMMAND ...`, which lists none of the flags the
    user was typing, and no suggestion. Now the subcommand refuses it, with its own usage
    and the closest flag it has (as git does: "did you mean"). Exit 2 as before.
    Severity: low."""
    done = cacheproxy(*args, cwd=tmp_path)
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr.startswith(usage)
    assert done.stderr.endswith(f"\n{said}\n")


def test_with_workers_a_log_path_that_cannot_open_is_said_once_before_they_start(
        tmp_path: Path) -> None:
    """What was wrong: `serve --workers 2 --log-file /no/such/dir/x.log` logged "2 workers
    on ..." and then every worker printed the same `log.path: cannot open ...` line (one
    per worker: 16 identical lines with --workers 16), then the parent's "a worker could not
    start; stopping". The README promises one line naming the key, and "before anything
    else is logged" for start errors; without --workers it was one line. Now the parent
    opens log.path first and says it once (exit 1, as without --workers).
    Severity: low (noise that hides which line matters)."""
    done = cacheproxy("serve", "--workers", "2", "--listen", f"127.0.0.1:{free_port()}",
                      "--upstream", "http://127.0.0.1:9", "--log-file",
                      str(tmp_path / "no" / "x.log"), cwd=tmp_path)
    assert (done.returncode, done.stdout) == (1, "")
    assert done.stderr == (f"cacheproxy: log.path: cannot open {tmp_path / 'no' / 'x.log'}: "
                           "no such file or directory\n")


def test_a_config_file_saved_with_a_byte_order_mark_is_read(tmp_path: Path) -> None:
    """What was wrong: a config file saved as "UTF-8" by a Windows editor (Notepad, or
    PowerShell's Out-File before 6.0) starts with a byte order mark, and was refused as
    `invalid TOML: Invalid statement (at line 1, column 1)`, a line that shows nothing
    wrong. The BOM is now skipped (lines and columns of other mistakes are unchanged), as
    Python's utf-8-sig reads text. Severity: low."""
    pid_file = tmp_path / "run.pid"
    (tmp_path / "c.toml").write_bytes(
        b'\xef\xbb\xbf# saved by Notepad\r\n[proxy]\r\npid_file = "' + bytes(pid_file)
        + b'"\r\n')
    done = cacheproxy("stop", "--config", "c.toml", cwd=tmp_path)
    assert (done.returncode, done.stdout) == (1, "")  # read: it names the file's pid_file
    assert done.stderr == (f"cacheproxy: stop: proxy.pid_file: {pid_file} does not exist: is "
                           "cacheproxy serve running with this configuration?\n")
    (tmp_path / "c.toml").write_bytes(b'\xef\xbb\xbf[proxy]\nvia = \n')
    done = cacheproxy("stop", "--config", "c.toml", cwd=tmp_path)
    assert done.stderr == ("cacheproxy: config error: c.toml: invalid TOML: Invalid value "
                           "(at line 2, column 7)\n")


def test_help_says_what_each_exit_status_means(tmp_path: Path) -> None:
    """What was wrong: the exit statuses scripts test (0, 1 when the server cannot run or
    there is nothing to signal, 2 for a mistake in the flags or the configuration) were
    said only here and there in the README and in cli.py's docstring; `cacheproxy --help`
    said none (as a man page's EXIT STATUS, or curl's and rsync's manuals, do).
    Severity: low (documentation of the contract)."""
    done = cacheproxy("--help", cwd=tmp_path)
    assert done.returncode == 0
    status = done.stdout.partition("\nexit status:\n")[2]
    assert status.startswith("  0  success; ")
    assert "\n  1  serve/demo cannot run " in status and "\n  2  a mistake in " in status
