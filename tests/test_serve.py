"""`cacheproxy serve` as a user runs it: a real process, real sockets."""

from __future__ import annotations

import asyncio
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
from processes import clean_env, free_port, start_serve, stop


def wait_listening(port: int, proc: subprocess.Popen[bytes], seconds: float = 10) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"serve exited early: {proc.stderr.read().decode()}")  # type: ignore[union-attr]
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise AssertionError("serve did not start listening")


@pytest.fixture
def serve_demo(tmp_path: Path) -> Iterator[tuple[int, subprocess.Popen[bytes]]]:
    """`cacheproxy serve` with no upstream: the demo origin starts beside it."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "cacheproxy", "serve", "--listen", f"127.0.0.1:{port}"],
        cwd=tmp_path, env=clean_env(CACHEPROXY_DEMO_LISTEN="127.0.0.1:0"),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    try:
        wait_listening(port, proc)
        yield port, proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


async def test_serve_without_upstream_proxies_the_demo_origin(serve_demo):
    port, _ = serve_demo
    async with aiohttp.ClientSession(f"http://127.0.0.1:{port}") as http:
        async with http.get("/") as index:
            assert index.status == 200 and "max-age" in await index.text()
        async with http.get("/max-age") as first:
            assert first.headers["X-Cache"] == "MISS"
        async with http.get("/max-age") as second:
            assert second.headers["X-Cache"] == "HIT"
            assert second.headers["X-Origin-Count"] == first.headers["X-Origin-Count"]


def test_sigterm_stops_serve_with_exit_0(serve_demo):
    _, proc = serve_demo
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=10) == 0
    assert b"Traceback" not in proc.stderr.read()  # type: ignore[union-attr]


def test_port_in_use_exits_1_with_one_line(tmp_path: Path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-m", "cacheproxy", "serve", "--listen", f"127.0.0.1:{port}",
             "--upstream", "http://127.0.0.1:9"],
            cwd=tmp_path, env=clean_env(), capture_output=True, timeout=30,
        )
    assert result.returncode == 1
    errors = [line for line in result.stderr.decode().splitlines()
              if line.startswith("cacheproxy:")]
    assert len(errors) == 1 and str(port) in errors[0]
    assert "Traceback" not in result.stderr.decode()


def test_sighup_reopens_the_log_file_after_rotation(tmp_path: Path):
    port, log = free_port(), tmp_path / "requests.log"
    proc = subprocess.Popen(
        [sys.executable, "-m", "cacheproxy", "serve", "--listen", f"127.0.0.1:{port}"],
        cwd=tmp_path, env=clean_env(CACHEPROXY_DEMO_LISTEN="127.0.0.1:0",
                                    CACHEPROXY_LOG_PATH=str(log)),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )

    def get(path: str) -> None:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            s.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
            while s.recv(65536):
                pass

    def wait_for(path: Path, text: str) -> None:
        for _ in range(100):
            if path.exists() and text in path.read_text():
                return
            time.sleep(0.05)
        raise AssertionError(f"{text!r} never reached {path}")

    try:
        wait_listening(port, proc)
        get("/before")
        wait_for(log, '"/before"')
        log.rename(tmp_path / "requests.log.1")
        proc.send_signal(signal.SIGHUP)
        time.sleep(0.2)
        get("/after")
        wait_for(log, '"/after"')
        assert '"/after"' not in (tmp_path / "requests.log.1").read_text()
    finally:
        proc.terminate()
        assert proc.wait(timeout=10) == 0


# --- start-up failures say which setting, which address and why (issue 13, item 2) ----------


def run_serve(*args: str, tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cacheproxy", "serve", *args], cwd=tmp_path,
                          env=clean_env(**env), capture_output=True, text=True, timeout=30)


def held_port() -> socket.socket:
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    return taken


def the_only_line(result: subprocess.CompletedProcess[str]) -> str:
    """Exit 1 and exactly one line on stderr: no "stopping", no traceback, no log lines."""
    assert result.returncode == 1, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


def test_demo_port_in_use_names_demo_listen(tmp_path: Path) -> None:
    with held_port() as taken:
        port = taken.getsockname()[1]
        result = run_serve("--listen", f"127.0.0.1:{free_port()}", tmp_path=tmp_path,
                           CACHEPROXY_DEMO_LISTEN=f"127.0.0.1:{port}")
    assert the_only_line(result) == (
        f"cacheproxy: demo.listen: cannot listen on 127.0.0.1:{port}: address already in use "
        "(by another process, perhaps another cacheproxy); the demo origin starts because "
        "proxy.upstream is empty: give --upstream URL, or set demo.listen")


@pytest.mark.parametrize("workers", ["1", "2"])
def test_proxy_port_in_use_names_proxy_listen(tmp_path: Path, workers: str) -> None:
    with held_port() as taken:
        port = taken.getsockname()[1]
        result = run_serve("--listen", f"127.0.0.1:{port}", "--upstream", "http://127.0.0.1:9",
                           "--workers", workers, tmp_path=tmp_path)
    assert the_only_line(result) == (
        f"cacheproxy: proxy.listen: cannot listen on 127.0.0.1:{port}: address already in use "
        "(by another process, perhaps another cacheproxy); choose another with --listen "
        "HOST:PORT (proxy.listen)")


def test_demo_port_in_use_with_workers_names_demo_listen(tmp_path: Path) -> None:
    with held_port() as taken:
        port = taken.getsockname()[1]
        result = run_serve("--listen", f"127.0.0.1:{free_port()}", "--workers", "2",
                           tmp_path=tmp_path, CACHEPROXY_DEMO_LISTEN=f"127.0.0.1:{port}")
    line = the_only_line(result)
    assert line.startswith(f"cacheproxy: demo.listen: cannot listen on 127.0.0.1:{port}: "
                           "address already in use")


def test_a_host_that_does_not_resolve_names_the_key_and_the_host(tmp_path: Path) -> None:
    # Longer than a DNS name may be (255): the resolver refuses it without asking a
    # server, so the test sends nothing off this machine.
    host = ".".join(["a" * 60] * 5)
    result = run_serve("--listen", f"{host}:9100", "--upstream",
                       "http://127.0.0.1:9", tmp_path=tmp_path)
    line = the_only_line(result)
    assert line.startswith(f"cacheproxy: proxy.listen: cannot listen on {host}:9100: "
                           f"cannot resolve the host '{host}' (")


async def test_an_unreachable_upstream_is_said_once_at_start_and_serving_goes_on(
        tmp_path: Path) -> None:
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    proc, port = await start_serve("--upstream", dead, cwd=tmp_path)
    try:
        async with aiohttp.ClientSession(f"http://127.0.0.1:{port}") as http:
            async with http.get("/_cacheproxy/healthz") as alive:
                assert alive.status == 200
            async with http.get("/anything") as answer:
                assert answer.status == 502
    finally:
        code, err = await stop(proc)
    assert code == 0
    warnings = [line for line in err.splitlines() if " WARNING " in line]
    # Once at start; then (issue 10) one line per request that got the 502.
    assert len(warnings) == 2, err
    assert f"upstream {dead} is not reachable: " in warnings[0]
    assert "connection refused" in warnings[0] and "serving anyway" in warnings[0]
    assert f"upstream {dead} failed for GET /anything: connection refused; answered 502" \
        in warnings[1]


async def test_log_file_flag_writes_the_request_log_there(tmp_path: Path) -> None:
    log = tmp_path / "run.log"
    proc, port = await start_serve("--upstream", "http://127.0.0.1:9", "--log-file", str(log),
                                   cwd=tmp_path)
    try:
        async with aiohttp.ClientSession() as http, \
                http.get(f"http://127.0.0.1:{port}/via-flag") as answer:
            assert answer.status == 502
    finally:
        code, _ = await stop(proc)
    assert code == 0
    assert '"path":"/via-flag"' in log.read_text()


async def test_with_workers_an_unreachable_upstream_is_said_once(tmp_path: Path) -> None:
    """--workers 2: the first worker says it; the second does not repeat it."""
    dead = f"http://127.0.0.1:{free_port()}"
    proc, port = await start_serve("--upstream", dead, "--workers", "2", cwd=tmp_path)
    try:
        async with aiohttp.ClientSession(f"http://127.0.0.1:{port}") as http:
            for _ in range(3):
                async with http.get("/_cacheproxy/healthz") as alive:
                    assert alive.status == 200
        await asyncio.sleep(1.0)  # both workers are up and have checked, or not
    finally:
        code, err = await stop(proc)
    assert code == 0
    said = [line for line in err.splitlines() if "is not reachable" in line]
    assert len(said) == 1, err


async def test_admin_listen_puts_the_control_plane_on_its_own_address(tmp_path: Path) -> None:
    """admin.listen (issue 10): the admin API, /metrics and the health checks answer on
    their own address; on proxy.listen the same paths are proxied like any other."""
    admin_port = free_port()
    env = clean_env(CACHEPROXY_DEMO_LISTEN="127.0.0.1:0",
                    CACHEPROXY_ADMIN_LISTEN=f"127.0.0.1:{admin_port}")
    proc, port = await start_serve(cwd=tmp_path, env=env)  # in front of the demo origin
    try:
        async with aiohttp.ClientSession() as http:
            admin = f"http://127.0.0.1:{admin_port}"
            for path in ("/_cacheproxy/stats", "/_cacheproxy/healthz", "/metrics"):
                async with http.get(admin + path) as answer:
                    assert answer.status == 200, path
            async with http.get(admin + "/max-age") as answer:
                assert answer.status == 404  # nothing is proxied there
            async with http.get(f"http://127.0.0.1:{port}/_cacheproxy/stats") as proxied:
                assert proxied.headers["Cache-Status"].startswith("cacheproxy; fwd=")
            async with http.get(f"http://127.0.0.1:{port}/max-age") as page:
                assert page.status == 200 and "fwd=uri-miss" in page.headers["Cache-Status"]
    finally:
        code, err = await stop(proc)
    assert code == 0, err
    assert f"admin API, /metrics and health checks on http://127.0.0.1:{admin_port}" in err


async def test_serve_freezes_what_exists_at_start(tmp_path: Path) -> None:
    """What exists once the proxy is set up is kept out of the collector's walk
    (gc.freeze, README "Garbage collection pauses")."""
    env = clean_env(CACHEPROXY_DEMO_LISTEN="127.0.0.1:0")
    proc, port = await start_serve(cwd=tmp_path, env=env)
    try:
        async with aiohttp.ClientSession() as http, \
                http.get(f"http://127.0.0.1:{port}/metrics") as answer:
            text = await answer.text()
    finally:
        code, err = await stop(proc)
    assert code == 0, err
    frozen = re.search(r"^cacheproxy_gc_frozen_objects (\d+)\.0$", text, re.M)
    assert frozen and int(frozen[1]) > 10_000, text  # the modules alone are more


def test_admin_listen_in_use_names_the_key(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_serve("--listen", f"127.0.0.1:{free_port()}", "--upstream",
                           "http://127.0.0.1:9", tmp_path=tmp_path,
                           CACHEPROXY_ADMIN_LISTEN=f"127.0.0.1:{port}")
    line = the_only_line(result)
    assert line.startswith(f"cacheproxy: admin.listen: cannot listen on 127.0.0.1:{port}: "
                           "address already in use"), line
