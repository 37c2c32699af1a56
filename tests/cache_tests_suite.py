"""Run the public HTTP caching test suite (http-cache-tests, behind cache-tests.fyi) through
cacheproxy, all on 127.0.0.1.

    python tests/cache_tests_suite.py [--min-required N] [--min-optimal N] [--id TEST_ID]
                                      [--results FILE] [--log FILE]

npm installs http-cache-tests@0.4.5 once into a cache folder ($CACHE_TESTS_DIR, default
~/.cache/cacheproxy/http-cache-tests-0.4.5); the suite's own server (node) and a
`cacheproxy serve` in front of it are started on free loopback ports; the suite's client
runs through the proxy. It prints the required and optimal figures and every test that
failed, and exits 1 when required or optimal passes fall below the bars, or when the proxy
answered more 502/504s of its own (upstream failures) than the suite provokes on purpose
(its server drops the connection in a few tests). tests/test_cache_tests_suite.py runs it
under pytest; the README (Development) has the figures.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

VERSION = "0.4.5"
PACKAGE = f"http-cache-tests@{VERSION}"
ROOT = Path(__file__).resolve().parent.parent
# A full run takes about 30 s; the bound is for a hung server or client.
CLIENT_TIMEOUT = 240.0

# The suite's server calls listen(port) with no host (every interface): bind loopback.
_LOOPBACK_PRELOAD = """
const net = require('net')
const listen = net.Server.prototype.listen
net.Server.prototype.listen = function (...args) {
  if (typeof args[0] === 'number' || typeof args[0] === 'string') {
    if (args.length === 1 || typeof args[1] === 'function') args.splice(1, 0, '127.0.0.1')
  }
  return listen.apply(this, args)
}
"""

# Prints {id: {kind, depends_on, browser_only}} for every test the CLI runs.
_CATALOGUE = """
import tests from './tests/index.mjs'
import surrogate from './tests/surrogate-control.mjs'
tests.push(surrogate)
const out = {}
for (const suite of tests) for (const t of suite.tests) {
  out[t.id] = { kind: t.kind || 'required', depends_on: t.depends_on || [],
                browser_only: t.browser_only === true, name: t.name,
                disconnects: t.requests.filter(r => r.disconnect).length }
}
console.log(JSON.stringify(out))
"""


def cache_dir() -> Path:
    default = Path.home() / ".cache" / "cacheproxy" / f"http-cache-tests-{VERSION}"
    return Path(os.environ.get("CACHE_TESTS_DIR") or default)


def install(where: Path) -> Path:
    """The package folder, installed with npm on first use."""
    package = where / "node_modules" / "http-cache-tests"
    manifest = package / "package.json"
    if manifest.exists() and json.loads(manifest.read_text())["version"] == VERSION:
        return package
    if shutil.which("npm") is None or shutil.which("node") is None:
        raise SystemExit("node and npm are needed (apt-get install nodejs npm)")
    where.mkdir(parents=True, exist_ok=True)
    subprocess.run(["npm", "install", "--prefix", str(where), "--no-audit", "--no-fund",
                    "--no-save", PACKAGE], check=True, stdout=subprocess.DEVNULL, timeout=300)
    return package


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(port: int, proc: subprocess.Popen[bytes], seconds: float = 20) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args!r} exited with {proc.returncode}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
            return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {seconds} s")


@contextlib.contextmanager
def running(args: list[str], **kwargs: object) -> Iterator[subprocess.Popen[bytes]]:
    """A child in its own process group, ended (the group: it may have children) on exit."""
    proc = subprocess.Popen(args, start_new_session=True, **kwargs)  # type: ignore[call-overload]
    try:
        yield proc
    finally:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


@dataclass
class Figures:
    required: int = 0
    required_total: int = 0
    optimal: int = 0
    optimal_total: int = 0
    failed_required: list[str] = field(default_factory=list)
    failed_optimal: list[str] = field(default_factory=list)
    upstream_errors: int = 0  # the proxy's own 502/504 answers during the run
    disconnects: int = 0  # requests whose connection the suite's server drops on purpose

    @property
    def unexpected_errors(self) -> int:
        return max(0, self.upstream_errors - self.disconnects)

    def summary(self) -> str:
        return (f"required {self.required}/{self.required_total}, "
                f"optimal {self.optimal}/{self.optimal_total}, "
                f"proxy 502/504: {self.upstream_errors} "
                f"({self.disconnects} connections dropped by the suite on purpose)")


def count(results: dict[str, object], catalogue: dict[str, dict[str, object]]) -> Figures:
    """As cache-tests.fyi counts: a test passes when its result is true; browser-only tests
    are not run against a proxy; "check" tests are informational and not counted."""
    figures = Figures()
    for test_id, test in catalogue.items():
        if test["browser_only"]:
            continue
        figures.disconnects += int(test["disconnects"])  # type: ignore[call-overload]
        passed = results.get(test_id) is True
        if test["kind"] == "required":
            figures.required_total += 1
            figures.required += passed
            if not passed:
                figures.failed_required.append(test_id)
        elif test["kind"] == "optimal":
            figures.optimal_total += 1
            figures.optimal += passed
            if not passed:
                figures.failed_optimal.append(test_id)
    return figures


def fyi_mark(test_id: str, results: dict[str, object],
             catalogue: dict[str, dict[str, object]]) -> str:
    """How cache-tests.fyi marks a result that is not a pass (lib/display.mjs
    determineTestResult): a dependency that did not pass first, then setup and retry
    failures, then a plain failure. Informative only: the figures count passes."""
    for dependency in catalogue[test_id]["depends_on"]:  # type: ignore[attr-defined]
        if results.get(dependency) is not True:
            return f"dependency {dependency} not passed"
    result = results.get(test_id)
    if isinstance(result, list) and result and result[0] == "Setup":
        return "retry" if result[1:2] == ["retry"] else "setup failed"
    return "failed" if result is not None else "not run"


def node_env(base: str, test_id: str = "") -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("npm_", "CACHEPROXY_"))}
    env.update(npm_config_base=base, npm_package_config_base=base,
               npm_config_id=test_id, npm_package_config_id=test_id)
    return env


def proxy_log_errors(log: Path) -> int:
    """Responses the proxy made itself because the upstream failed (502, 504)."""
    errors = 0
    if not log.exists():
        return 0
    for line in log.read_text(errors="replace").splitlines():
        with contextlib.suppress(ValueError):
            record = json.loads(line)
            # cache "ERROR": the proxy's own answer to an upstream failure
            if record.get("status") in (502, 504) and record.get("cache") == "ERROR":
                errors += 1
    return errors


def run(test_id: str = "", log_path: Path | None = None, python: str = sys.executable
        ) -> tuple[dict[str, object], Figures, str, dict[str, dict[str, object]]]:
    """Run the suite (or one test, with its request/response dump) through a fresh proxy."""
    package = install(cache_dir())
    catalogue = json.loads(subprocess.run(
        ["node", "--input-type=module", "-e", _CATALOGUE], cwd=package, check=True,
        capture_output=True, text=True, timeout=60).stdout)
    with tempfile.TemporaryDirectory(prefix="cache-tests-") as tmp:
        work = Path(tmp)
        preload = work / "loopback.cjs"
        preload.write_text(_LOOPBACK_PRELOAD)
        log = log_path or work / "proxy.log"
        server_port, proxy_port = free_port(), free_port()
        server_env = node_env("") | {
            "npm_package_config_protocol": "http", "npm_package_config_port": str(server_port),
            "npm_package_config_pidfile": str(work / "server.pid")}
        proxy_env = {k: v for k, v in os.environ.items() if not k.startswith("CACHEPROXY_")}
        proxy_env.update(CACHEPROXY_LOG_PATH=str(log), CACHEPROXY_LOG_FORMAT="json",
                         PYTHONPATH=os.pathsep.join(
                             p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p))
        # The proxy's own log lines (one WARNING per upstream failure, with its cause).
        messages = open(log.with_name(log.name + ".stderr"), "wb")  # noqa: SIM115
        with messages, running(["node", "-r", str(preload), "server/server.mjs"],
                               cwd=package, env=server_env, stdout=subprocess.DEVNULL) as server:
            wait_for(server_port, server)
            with running([python, "-m", "cacheproxy", "serve", "--config", os.devnull,
                          "--listen", f"127.0.0.1:{proxy_port}",
                          "--upstream", f"http://127.0.0.1:{server_port}"],
                         cwd=work, env=proxy_env, stdout=subprocess.DEVNULL,
                         stderr=messages) as proxy:
                wait_for(proxy_port, proxy)
                client = subprocess.run(
                    ["node", "--no-warnings", "cli.mjs"], cwd=package,
                    env=node_env(f"http://127.0.0.1:{proxy_port}", test_id),
                    capture_output=True, text=True, timeout=CLIENT_TIMEOUT)
        errors = proxy_log_errors(log)
    if test_id:
        return {}, Figures(upstream_errors=errors), client.stdout + client.stderr, catalogue
    try:
        results = json.loads(client.stdout)
    except ValueError as exc:
        raise RuntimeError(f"the suite's client printed no results: {client.stderr}") from exc
    figures = count(results, catalogue)
    figures.upstream_errors = errors
    return results, figures, client.stderr, catalogue


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--id", default="", help="run one test and print its dump")
    parser.add_argument("--min-required", type=int, default=0)
    parser.add_argument("--min-optimal", type=int, default=0)
    parser.add_argument("--results", type=Path, help="write the suite's results.json here")
    parser.add_argument("--log", type=Path, help="keep the proxy's request log here "
                        "(and its stderr beside it, as LOG.stderr)")
    args = parser.parse_args(argv)
    results, figures, output, catalogue = run(args.id, args.log)
    if args.id:
        print(output)
        return 0
    if args.results:
        args.results.write_text(json.dumps(results, indent=2))
    print(figures.summary())
    for kind, failed in (("required", figures.failed_required),
                         ("optimal ", figures.failed_optimal)):
        for test_id in failed:
            print(f"  {kind} failed: {test_id}: {results.get(test_id)} "
                  f"[cache-tests.fyi: {fyi_mark(test_id, results, catalogue)}]")
    ok = (figures.required >= args.min_required and figures.optimal >= args.min_optimal
          and figures.unexpected_errors == 0)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
