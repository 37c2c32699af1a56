"""Shared by the finding scripts: a raw-socket origin on 127.0.0.1 whose answers are
scripted per path, a `cacheproxy serve` in front of it, and a raw HTTP/1.1 client.
Run a script as: PYTHONPATH=/tmp/rev-sem /work/main/.venv/bin/python findings/NN-x.py"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from email.utils import formatdate

Script = Callable[[str, str, dict[str, str], int], tuple[int, list[tuple[str, str]], bytes]]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_date(t: float | None = None) -> str:
    return formatdate(time.time() if t is None else t, usegmt=True)


class Origin:
    """answers[path] = fn(method, path, headers(lower), n) -> (status, fields, body).
    Fields are sent exactly as given (no Date unless given); Content-Length is added
    unless given or status is 1xx/204/304 (then no body)."""

    def __init__(self) -> None:
        self.answers: dict[str, Script] = {}
        self.seen: list[tuple[str, str, dict[str, str]]] = []
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def count(self, path: str) -> int:
        return sum(1 for _, p, _ in self.seen if p == path)

    def _accept(self) -> None:
        while True:
            c, _ = self.sock.accept()
            threading.Thread(target=self._serve, args=(c,), daemon=True).start()

    def _serve(self, c: socket.socket) -> None:
        buf = b""
        c.settimeout(10)
        try:
            while True:
                while b"\r\n\r\n" not in buf:
                    d = c.recv(65536)
                    if not d:
                        return
                    buf += d
                head, buf = buf.split(b"\r\n\r\n", 1)
                lines = head.decode("latin-1").split("\r\n")
                method, path, _ = lines[0].split(" ", 2)
                h: dict[str, str] = {}
                for line in lines[1:]:
                    k, _, v = line.partition(":")
                    k = k.strip().lower()
                    h[k] = (h[k] + ", " + v.strip()) if k in h else v.strip()
                n = int(h.get("content-length", "0"))
                while len(buf) < n:
                    buf += c.recv(65536)
                buf = buf[n:]
                self.seen.append((method, path, h))
                fn = self.answers.get(path.split("?")[0])
                if fn is None:
                    status, fields, body = 404, [("Cache-Control", "no-store")], b"nf"
                else:
                    got = fn(method, path, h, self.count(path))
                    if isinstance(got, bytes):  # raw bytes, sent as they are
                        c.sendall(got)
                        continue
                    status, fields, body = got
                out = [f"HTTP/1.1 {status} X"]
                names = {k.lower() for k, _ in fields}
                for k, v in fields:
                    out.append(f"{k}: {v}")
                nobody = status in (204, 304) or status < 200
                if not nobody and "content-length" not in names and \
                        "transfer-encoding" not in names:
                    out.append(f"Content-Length: {len(body)}")
                data = ("\r\n".join(out) + "\r\n\r\n").encode("latin-1")
                if not nobody and method != "HEAD":
                    data += body
                c.sendall(data)
        except OSError:
            pass
        finally:
            c.close()


class Proxy:
    def __init__(self, upstream_port: int, *env_pairs: tuple[str, str]) -> None:
        self.port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("CACHEPROXY_")}
        env.update(dict(env_pairs))
        self.log = tempfile.NamedTemporaryFile(prefix="rev-sem-", suffix=".log", delete=False)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "cacheproxy", "serve", "--listen",
             f"127.0.0.1:{self.port}", "--upstream", f"http://127.0.0.1:{upstream_port}",
             "--config", "/dev/null"],
            env=env, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True,
            cwd="/tmp")
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), 0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise SystemExit("proxy did not start: " + open(self.log.name).read())

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()


class Resp:
    def __init__(self, status: int, fields: list[tuple[str, str]], body: bytes, raw: bytes):
        self.status, self.fields, self.body, self.raw = status, fields, body, raw

    def get(self, name: str) -> str | None:
        vals = [v for k, v in self.fields if k.lower() == name.lower()]
        return ", ".join(vals) if vals else None

    def all(self, name: str) -> list[str]:
        return [v for k, v in self.fields if k.lower() == name.lower()]

    def __repr__(self) -> str:
        return self.raw.split(b"\r\n\r\n")[0].decode("latin-1") + f"\n[body {self.body[:60]!r}]"


def request(port: int, method: str, path: str, fields: list[tuple[str, str]] = (),
            body: bytes = b"", timeout: float = 10) -> Resp:
    s = socket.create_connection(("127.0.0.1", port), timeout)
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1"]
    lines += [f"{k}: {v}" for k, v in fields]
    if body:
        lines.append(f"Content-Length: {len(body)}")
    lines.append("Connection: close")
    s.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)
    raw = b""
    while True:
        d = s.recv(65536)
        if not d:
            break
        raw += d
    s.close()
    head, _, rest = raw.partition(b"\r\n\r\n")
    hl = head.decode("latin-1").split("\r\n")
    status = int(hl[0].split(" ")[1])
    fields_out = []
    for line in hl[1:]:
        k, _, v = line.partition(":")
        fields_out.append((k.strip(), v.strip()))
    te = [v for k, v in fields_out if k.lower() == "transfer-encoding"]
    if te and "chunked" in te[0].lower():
        out, r = b"", rest
        while r:
            size_line, _, r = r.partition(b"\r\n")
            size = int(size_line.split(b";")[0], 16)
            if size == 0:
                break
            out, r = out + r[:size], r[size + 2:]
        rest = out
    return Resp(status, fields_out, rest, raw)


def check(failures: list[str], cond: bool, what: str) -> None:
    print(("ok   " if cond else "FAIL ") + what)
    if not cond:
        failures.append(what)
