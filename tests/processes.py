"""Running `cacheproxy` as a user does, in a real process, for the tests that need one."""

from __future__ import annotations

import asyncio
import contextlib
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
            return proc, port
        except OSError:
            await asyncio.sleep(0.05)
    proc.kill()
    raise AssertionError("serve did not start listening")


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
