"""`cacheproxy serve` as a user runs it: a real process, real sockets."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
from processes import clean_env, free_port


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
