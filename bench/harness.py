"""What run.py and memory.py share: starting the origin, the proxy and the
ceiling as child processes on free loopback ports, pinning them to CPUs,
reading a process's memory, and small HTTP checks."""

from __future__ import annotations

import contextlib
import http.client
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
RESULTS = BENCH / "results"
PYTHON = sys.executable
HOST = "127.0.0.1"  # loopback only


def cacheproxy_command() -> list[str]:
    """The installed console script beside this interpreter, else `python -m cacheproxy`."""
    script = Path(PYTHON).parent / "cacheproxy"
    return [str(script)] if script.exists() else [PYTHON, "-m", "cacheproxy"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class Cpus:
    """Where each process runs. With two cores: the server under test alone on
    one, the load generator (and the origin, idle during hits) on the other."""

    server: int | None
    client: int | None
    origin: int | None

    @classmethod
    def plan(cls, enabled: bool = True) -> Cpus:
        cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
        if not enabled or len(cpus) < 2 or shutil.which("taskset") is None:
            return cls(None, None, None)
        return cls(cpus[0], cpus[1], cpus[2] if len(cpus) > 2 else cpus[1])

    def describe(self) -> str:
        if self.server is None:
            return "not pinned"
        return f"server on CPU {self.server}, load generator on CPU {self.client}, " \
               f"origin on CPU {self.origin} (taskset)"


def pinned(cmd: Sequence[str], cpu: int | None) -> list[str]:
    return ["taskset", "-c", str(cpu), *cmd] if cpu is not None else list(cmd)


@dataclass
class Child:
    """A server process we started; stop() ends exactly this process."""

    name: str
    proc: subprocess.Popen[bytes]
    port: int
    log: Path
    cmd: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def log_tail(self, lines: int = 20) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        return ""


def start(
    name: str, cmd: Sequence[str], port: int, *, cpu: int | None = None,
    env: Mapping[str, str] | None = None, timeout: float = 20.0,
) -> Child:
    """Start cmd (which must listen on port) and wait until it accepts connections."""
    RESULTS.mkdir(exist_ok=True)
    log = RESULTS / f"{name}.log"
    full = pinned(cmd, cpu)
    with log.open("wb") as out:
        proc = subprocess.Popen(
            full, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT, stdin=subprocess.DEVNULL,
            env={**os.environ, **(env or {})},
        )
    child = Child(name, proc, port, log, full)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{name} exited with {proc.returncode}:\n{child.log_tail()}")
        with contextlib.suppress(OSError), socket.create_connection((HOST, port), 0.2):
            return child
        time.sleep(0.05)
    child.stop()
    raise RuntimeError(f"{name} did not listen on {port} within {timeout:.0f}s")


def start_origin(cpu: int | None = None, engine: str = "aiohttp") -> Child:
    """bench/origin.py; engine "raw" is its faster asyncio Protocol (no /big)."""
    port = free_port()
    cmd = [PYTHON, str(BENCH / "origin.py"), "--listen", f"{HOST}:{port}", "--engine", engine]
    return start("origin", cmd, port, cpu=cpu)


def start_proxy(
    upstream: str, *, cpu: int | None = None, env: Mapping[str, str] | None = None,
    name: str = "proxy", workers: int = 1,
) -> Child:
    """`cacheproxy serve` with its default config (config/cacheproxy.toml: the JSON
    request log on, to this child's log file) but for the upstream and the listener.

    PYTHONPATH puts this checkout first, so a venv installed (editable) from another
    checkout still runs the code beside this harness."""
    port = free_port()
    cmd = [*cacheproxy_command(), "serve", "--upstream", upstream, "--listen", f"{HOST}:{port}"]
    if workers != 1:
        cmd += ["--workers", str(workers)]
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    return start(name, cmd, port, cpu=cpu, env={"PYTHONPATH": path, **(env or {})})


def start_ceiling(fixtures: Path, cpu: int | None = None) -> Child:
    port = free_port()
    cmd = [PYTHON, str(BENCH / "ceiling.py"), "--fixtures", str(fixtures),
           "--listen", f"{HOST}:{port}"]
    return start("ceiling", cmd, port, cpu=cpu)


@contextlib.contextmanager
def running(*children: Child) -> Iterator[None]:
    try:
        yield
    finally:
        for child in reversed(children):
            child.stop()


# -- memory of a process ---------------------------------------------------


def proc_status(pid: int) -> dict[str, int]:
    """VmRSS, VmHWM, ... from /proc/PID/status, in bytes."""
    out: dict[str, int] = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, rest = line.partition(":")
            parts = rest.split()
            if key.startswith(("Vm", "Rss")) and len(parts) == 2 and parts[1] == "kB":
                out[key] = int(parts[0]) * 1024
    return out


def rss(pid: int) -> int:
    return proc_status(pid)["VmRSS"]


def descendants(pid: int) -> list[int]:
    """pid and every live process below it (nginx's workers, cacheproxy's --workers),
    found through each process's parent in /proc/*/stat."""
    parent: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError), \
                    open(f"/proc/{entry}/stat") as f:
                parent[int(entry)] = int(f.read().rsplit(")", 1)[1].split()[1])
    found, todo = [pid], [pid]
    while todo:
        of = todo.pop()
        kids = [p for p, pp in parent.items() if pp == of]
        found += kids
        todo += kids
    return found


def machine_cpu_seconds() -> float:
    """CPU time spent by everything on the machine (all CPUs, not idle), from /proc/stat.
    Less the benchmark's own processes, it tells how busy the neighbours were."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    guest = sum(fields[8:10]) if len(fields) > 9 else 0  # already inside user / nice
    return (sum(fields) - idle - guest) / os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process and its live descendants, from /proc/PID/stat."""
    total = 0
    for p in descendants(pid):
        with contextlib.suppress(OSError), open(f"/proc/{p}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


# -- small HTTP checks -----------------------------------------------------


@dataclass(frozen=True)
class Answer:
    status: int
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> str:
        return next((v for k, v in self.headers if k.lower() == name.lower()), "")


def get(port: int, path: str, headers: Mapping[str, str] | None = None) -> Answer:
    conn = http.client.HTTPConnection(HOST, port, timeout=10)
    try:
        conn.request("GET", path, headers=dict(headers or {}))
        resp = conn.getresponse()
        return Answer(resp.status, resp.getheaders(), resp.read())
    finally:
        conn.close()


def get_json(port: int, path: str) -> dict[str, int]:
    import json

    return json.loads(get(port, path).body)


def mib(n: float) -> str:
    return f"{n / 2**20:.1f} MiB"
