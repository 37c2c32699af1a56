"""Running `cacheproxy` as a user does, in a real process, for the tests that need one."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import signal
import socket
import sys
import time
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def clean_env(**extra: str) -> dict[str, str]:
    """The environment without the developer's CACHEPROXY_* settings, plus extra."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CACHEPROXY_")}
    env.update(extra)
    return env


_started: list[asyncio.subprocess.Process] = []


def kill_leftovers() -> None:
    """Kill what start_serve started and a test left running (it failed before its stop)."""
    while _started:
        proc = _started.pop()
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)  # the process and any --workers children


async def start_serve(
    *args: str, cwd: Path, env: dict[str, str] | None = None, port: int | None = None,
    seconds: float = 15,
) -> tuple[asyncio.subprocess.Process, int]:
    """`cacheproxy serve --listen 127.0.0.1:PORT ARGS...`, once it accepts connections."""
    port = port or free_port()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "cacheproxy", "serve", "--listen", f"127.0.0.1:{port}", *args,
        cwd=cwd, env=env if env is not None else clean_env(),
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
        start_new_session=True,  # its own process group: kill_leftovers reaches its workers
    )
    _started.append(proc)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.returncode is not None:
            raise AssertionError(f"serve exited early: {(await proc.stderr.read()).decode()}")  # type: ignore[union-attr]
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
        except OSError:
            await asyncio.sleep(0.05)
            continue
        # With --workers N, the first worker listening is not all of them: a test spreading
        # connections over the workers would find them all on that one.
        while _listeners(port) < _workers_asked(args) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        return proc, port
    proc.kill()
    raise AssertionError("serve did not start listening")


def _workers_asked(args: tuple[str, ...]) -> int:
    """N of a `--workers N` in args (1 without, or for "auto")."""
    for flag, value in itertools.pairwise(args):
        if flag == "--workers" and value.isdigit():
            return int(value)
    return 1


async def accepting(port: int, seconds: float = 15) -> bool:
    """Whether something accepts connections on 127.0.0.1:port within seconds."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            await asyncio.sleep(0.05)
            continue
        writer.close()
        return True
    return False


def _listeners(port: int) -> int:
    """Sockets listening on 127.0.0.1:port (each worker's own, SO_REUSEPORT), from
    /proc/net/tcp (state 0A is LISTEN); no /proc: as many as asked, not waited for."""
    try:
        table = Path("/proc/net/tcp").read_text().splitlines()[1:]
    except OSError:
        return 1 << 16
    local = f"0100007F:{port:04X}"
    return sum(1 for row in table if row.split()[1] == local and row.split()[3] == "0A")


async def stop(proc: asyncio.subprocess.Process, timeout: float = 15) -> tuple[int, str]:
    """SIGTERM, then the exit status and everything it wrote to stderr."""
    if proc.returncode is None:
        proc.terminate()
    try:
        _, err = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        proc.kill()
        _, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, (err or b"").decode(errors="replace")
