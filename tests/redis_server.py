"""A real redis-server on 127.0.0.1 for the tests: started, killed (a crash), restarted."""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import time

_READY_WITHIN = 10.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _pong(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")
    except OSError:
        return False


class RedisServer:
    """redis-server with no persistence: a restart comes back empty, as after a crash."""

    def __init__(self, executable: str = "redis-server") -> None:
        path = shutil.which(executable)
        if path is None:
            raise FileNotFoundError(f"{executable} not found (apt-get install redis-server, "
                                    "or `make system-deps`)")
        self.executable = path
        self.port = _free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        """Start (again) on the same port and wait until it answers PING."""
        assert self.process is None, "already running"
        self.process = subprocess.Popen(
            [self.executable, "--port", str(self.port), "--bind", "127.0.0.1",
             "--save", "", "--appendonly", "no", "--daemonize", "no"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + _READY_WITHIN
        while not _pong(self.port):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"redis-server did not start on port {self.port}")
            time.sleep(0.01)

    def stop(self) -> None:
        """SIGKILL: connections drop as in a crash, nothing is saved."""
        if self.process is not None:
            if self.process.poll() is None:
                self.process.send_signal(signal.SIGKILL)  # works on a paused one too
            self.process.wait()
            self.process = None

    def pause(self) -> None:
        """SIGSTOP: connections stay open and nothing answers (a hung or very slow Redis)."""
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGCONT)
