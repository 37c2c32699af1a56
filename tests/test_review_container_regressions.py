"""Review of the container image and the compose deployment, read as an operator would.

Looked at, by hand (no Docker engine here): the Dockerfile from a clean clone (every COPY
source present and not in .dockerignore; `pip install -c constraints.txt .` from the
copied files works on Python 3.11, and every pinned wheel exists for cp311 on x86_64 and
aarch64; requires-python >= 3.11 matches python:3.11-slim); the image's CMD run as uid
10001 in the WORKDIR with the image's ENV, compose's environment and HOME, as PID 1 of its
own pid namespace (`unshare --pid`), against a real redis-server and the demo origin: JSON
lines on stdout, diagnostics on stderr; SIGTERM drains within stop_grace_period and exits
0 (a 12 s request is answered 503 at 8 s, the process gone at 8.04 s), also with
--workers 2; SIGHUP and `cacheproxy reload` (entered into the namespace as `docker compose
exec` does) find pid 1 through the pid file; a stale pid file left by a SIGKILL names pid 1
again and does not block the restart; an unknown CACHEPROXY_* variable is refused, named;
healthz answers without the admin token, the admin API not. The compose file through
Compose v2's own parser (tests/test_compose_topology.py).

Found wrong, and tested here: the HEALTHCHECK's fixed URL (port 8080, /_cacheproxy/,
through any http_proxy, and failing the replica on a mistake in the file a reload
refused); the non-root user's HOME in the root-owned WORKDIR (no place for forward mode's
CA); keys edited in the mounted file that the environment silently overrode, among them
admin.token blanked by compose; unrotated docker logs; every wheel reinstalled on each
code change.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from aiohttp import web
from processes import accepting, clean_env, free_port, start_serve, stop
from test_compose_topology import dockerfile_env, render_compose

ROOT = Path(__file__).resolve().parent.parent


def dockerfile_instructions() -> list[tuple[str, str]]:
    """The Dockerfile's (instruction, arguments) in order, continuation lines joined."""
    text = re.sub(r"\\\n\s*", " ", (ROOT / "Dockerfile").read_text())
    return [(line.split(" ", 1)[0], line.split(" ", 1)[1]) for line in text.splitlines()
            if line and not line.startswith("#")]


def dockerfile_instruction(name: str) -> str:
    """The arguments of the Dockerfile's last instruction `name` (all of them for RUN)."""
    found = [args for instruction, args in dockerfile_instructions() if instruction == name]
    assert found, f"the Dockerfile has no {name}"
    return " && ".join(found) if name == "RUN" else found[-1]


def healthcheck_command() -> list[str]:
    """HEALTHCHECK [options] CMD ["exec", "form"], as the engine runs it."""
    _, _, command = dockerfile_instruction("HEALTHCHECK").partition(" CMD ")
    return json.loads(command)


def container_command(argv: list[str]) -> list[str]:
    """A command of the image, run here: the installed `cacheproxy` script is this
    checkout's `python -m cacheproxy`, `python` this interpreter."""
    if argv[0] == "cacheproxy":
        return [sys.executable, "-m", "cacheproxy", *argv[1:]]
    if argv[0] == "python":
        return [sys.executable, *argv[1:]]
    return argv


def container_env(tmp_path: Path, **compose: str) -> dict[str, str]:
    """The image's ENV and a compose `environment`, with the pid file in this test's
    directory (each container has its own /tmp)."""
    return clean_env(**{**dockerfile_env(), **compose,
                        "CACHEPROXY_PROXY_PID_FILE": str(tmp_path / "cacheproxy.pid")})


async def start_cmd(env: dict[str, str], port: int,
                    workdir: Path = ROOT) -> asyncio.subprocess.Process:
    """The image's CMD in its WORKDIR (this checkout, which holds config/), once it listens."""
    cmd = json.loads(dockerfile_instruction("CMD"))
    proc = await asyncio.create_subprocess_exec(
        *container_command(cmd), cwd=workdir, env=env, stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE)
    for _ in range(300):
        if proc.returncode is not None:
            raise AssertionError((await proc.stderr.read()).decode())  # type: ignore[union-attr]
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            return proc
        except OSError:
            await asyncio.sleep(0.05)
    proc.kill()
    raise AssertionError("the image's CMD did not start listening")


async def stop_cmd(proc: asyncio.subprocess.Process) -> str:
    if proc.returncode is None:
        proc.terminate()
    await asyncio.wait_for(proc.wait(), 20)
    return (await proc.stderr.read()).decode()  # type: ignore[union-attr]


def run_image_command(argv: list[str], env: dict[str, str],
                      workdir: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(container_command(argv), cwd=workdir, env=env, capture_output=True,
                          text=True, timeout=30)


async def origin_answering_everything(aiohttp_server) -> str:
    """An origin that answers 200 to any path, as a single-page app's catch-all does."""
    async def page(request: web.Request) -> web.Response:
        return web.Response(text="app")

    app = web.Application()
    app.router.add_get("/{tail:.*}", page)
    server = await aiohttp_server(app, host="127.0.0.1")
    return str(server.make_url("")).rstrip("/")


# -- the image's HEALTHCHECK -------------------------------------------------------------------


@pytest.mark.parametrize("setting", ["proxy.listen", "admin.listen", "http_proxy"])
async def test_the_image_healthcheck_asks_healthz_where_the_config_puts_it(
        tmp_path, aiohttp_server, setting):
    """Was: the image's HEALTHCHECK (and compose's) asked the fixed URL
    http://127.0.0.1:8080/_cacheproxy/healthz with urllib. An operator who moved the port
    (CACHEPROXY_PROXY_LISTEN=0.0.0.0:9000) got an "unhealthy" container that served fine
    (and, under `depends_on: service_healthy` or an orchestrator, one never started or
    restarted in a loop); with admin.listen set, healthz moves there and the fixed URL is
    proxied to the origin, so the probe tested the origin, not the proxy; and urllib sends
    the probe through the http_proxy that Docker's client proxy settings put into every
    container. Docker runs the HEALTHCHECK in the container's environment, so a probe that
    reads the config finds what serve listens on. Severity: medium (a healthy replica
    reported down, or a dead admin plane reported up)."""
    port = free_port()
    compose = {"CACHEPROXY_PROXY_LISTEN": f"127.0.0.1:{port}",
               "CACHEPROXY_PROXY_UPSTREAM": await origin_answering_everything(aiohttp_server)}
    probe_env: dict[str, str] = {}
    if setting == "admin.listen":
        compose["CACHEPROXY_ADMIN_LISTEN"] = f"127.0.0.1:{free_port()}"
    if setting == "http_proxy":  # a proxy the container cannot reach from its loopback
        probe_env = {"http_proxy": f"http://127.0.0.1:{free_port()}", "no_proxy": ""}
    env = container_env(tmp_path, **compose)
    proc = await start_cmd(env, port)
    try:
        checked = await asyncio.to_thread(run_image_command, healthcheck_command(),
                                          {**env, **probe_env})
        assert checked.returncode == 0, checked.stdout + checked.stderr
        stopped = await stop_cmd(proc)
        after = await asyncio.to_thread(run_image_command, healthcheck_command(), env)
        assert after.returncode == 1, after.stdout + after.stderr  # nothing listens now
        assert "Traceback" not in after.stderr + stopped
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_a_mistake_in_the_mounted_file_does_not_make_a_running_replica_unhealthy(
        tmp_path):
    """A reload refuses a config file with a mistake and the server runs on with the
    config it has (README, Running it). Its healthcheck reads that file too: it must not
    then report the running replica unhealthy, or an orchestrator acting on health (Swarm,
    an autoheal container) restarts it into the mistake (exit 2 at start, a replica
    down). `cacheproxy health` asks where the environment alone says, exit 0, and says
    the mistake in its output (`docker inspect`'s health log). Never exit 2, which Docker
    reserves. Severity: medium (a typo turns a probe into an outage)."""
    (tmp_path / "config").mkdir()  # ./config, mounted at /app/config
    good = (ROOT / "config" / "cacheproxy.toml").read_text()
    (tmp_path / "config" / "cacheproxy.toml").write_text(good)
    port = free_port()
    env = container_env(tmp_path, CACHEPROXY_PROXY_LISTEN=f"127.0.0.1:{port}",
                        CACHEPROXY_PROXY_UPSTREAM="http://127.0.0.1:9")
    proc = await start_cmd(env, port, workdir=tmp_path)
    try:
        (tmp_path / "config" / "cacheproxy.toml").write_text(good + "\n[cache]\nmax_bytes = 1\n")
        checked = await asyncio.to_thread(run_image_command, healthcheck_command(), env,
                                          tmp_path)
        assert checked.returncode == 0, checked.stderr
        assert "config error" in checked.stdout and "cacheproxy.toml" in checked.stdout
        await stop_cmd(proc)
        after = await asyncio.to_thread(run_image_command, healthcheck_command(), env,
                                        tmp_path)
        assert after.returncode == 1 and "config error" in after.stderr, after.stderr
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


def test_the_compose_healthchecks_are_the_config_following_probe():
    """Was: compose's proxies and demo origin ran the same fixed-URL urllib one-liner (the
    test above). Now `cacheproxy health` (and `--demo` for the origin). Severity: medium."""
    services = render_compose()["services"]
    for name in ("proxy-a", "proxy-b"):
        assert services[name]["healthcheck"]["test"] == ["CMD", "cacheproxy", "health"]
    assert services["origin"]["healthcheck"]["test"] == ["CMD", "cacheproxy", "health",
                                                          "--demo"]


def test_health_with_nothing_listening_is_one_line_and_exit_1(tmp_path):
    """`cacheproxy health` where nothing listens: the answer an operator reads in
    `docker inspect`'s health log is one line naming the URL asked, never a traceback.
    (The urllib one-liner printed a 15-line traceback.) Severity: low."""
    port = free_port()
    done = run_image_command(["cacheproxy", "health"], container_env(
        tmp_path, CACHEPROXY_PROXY_LISTEN=f"0.0.0.0:{port}"))
    assert done.returncode == 1
    assert done.stderr.startswith(f"cacheproxy: health: http://127.0.0.1:{port}/_cacheproxy/"
                                  "healthz: no answer")
    assert done.stderr.count("\n") == 1



async def test_health_asks_where_a_listen_flag_put_serve_and_demo(tmp_path):
    """`cacheproxy serve --listen` and `cacheproxy demo --listen` put the server where only
    that process knows: `cacheproxy health` read the file and the environment alone, so a
    server started with the flag (as a compose `command:` may) was reported unhealthy
    while it served. `health --listen` takes the same address (and `--demo --listen` the
    demo's). A malformed one is a flag error: exit 2, one line naming --listen, as the
    other flags. Severity: low (a documented gap, now a flag)."""
    env = container_env(tmp_path, CACHEPROXY_PROXY_LISTEN=f"127.0.0.1:{free_port()}",
                        CACHEPROXY_DEMO_LISTEN=f"127.0.0.1:{free_port()}")
    proc, port = await start_serve("--upstream", "http://127.0.0.1:9", cwd=tmp_path, env=env)
    demo_port = free_port()
    demo = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "cacheproxy", "demo", "--listen", f"127.0.0.1:{demo_port}",
        cwd=tmp_path, env=env, stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL)
    try:
        assert await accepting(demo_port), "the demo did not start listening"
        unflagged = await asyncio.to_thread(run_image_command, ["cacheproxy", "health"], env)
        assert unflagged.returncode == 1, unflagged.stdout  # (nothing at the env's address)
        for argv, asked in ((["--listen", f"127.0.0.1:{port}"], port),
                            (["--demo", "--listen", f"127.0.0.1:{demo_port}"], demo_port)):
            done = await asyncio.to_thread(run_image_command, ["cacheproxy", "health", *argv],
                                           env)
            assert done.returncode == 0, done.stdout + done.stderr
            assert f"http://127.0.0.1:{asked}/" in done.stdout
        bad = await asyncio.to_thread(run_image_command,
                                      ["cacheproxy", "health", "--listen", "8080"], env)
        assert bad.returncode == 2 and bad.stderr.count("\n") == 1, bad.stderr
        assert bad.stderr.startswith("cacheproxy: health: --listen: ")
    finally:
        demo.kill()
        await demo.wait()
        await stop(proc)

# -- the non-root user's writable places -------------------------------------------------------


def image_user_home() -> tuple[str, bool]:
    """(the home directory useradd gives the image's USER, whether useradd creates it)."""
    uid = dockerfile_instruction("USER").split(":")[0]
    run = dockerfile_instruction("RUN")
    [useradd] = [part for part in re.split(r"&&|;", run)
                 if "useradd" in part and f"--uid {uid}" in part]
    home = re.search(r"(?:--home-dir|-d)\s+(\S+)", useradd)
    assert home, "useradd without --home-dir: /home/<name>"
    return home.group(1), bool(re.search(r"\s(--create-home|-m)\b", useradd))


async def test_the_image_user_has_a_writable_home_for_the_forward_ca(tmp_path):
    """Was: useradd --home-dir /app --no-create-home: HOME is the WORKDIR, owned by root,
    so forward mode's CA (forward.ca_dir "" = ~/.local/share/cacheproxy) could not be made:
    `docker compose exec proxy-a cacheproxy ca` and a serve with forward.intercept_tls said
    "/app/.local/share/cacheproxy: cannot create the directory: Permission denied" (seen
    running the image's command as uid 10001 with HOME=/app). The image now gives its user
    a home of its own. Severity: medium (a documented feature unusable in the image without
    an undocumented setting)."""
    home, created = image_user_home()
    uid = dockerfile_instruction("USER").split(":")[0]
    workdir = dockerfile_instruction("WORKDIR")
    assert created and home.rstrip("/") != workdir.rstrip("/"), (home, created, workdir)
    # The CA's directory exists in the image, the user's: a named volume mounted there
    # (to keep the CA browsers trust across re-creations) is initialised with its owner.
    assert re.search(rf"install -d -o {uid} -g {uid} -m 0700 .*"
                     rf"{re.escape(home)}/\.local/share/cacheproxy\b",
                     dockerfile_instruction("RUN"))
    # And the CA is made under it, as `cacheproxy ca` in the container does (HOME from
    # /etc/passwd): here a directory standing for that home, as useradd creates it.
    fake_home = tmp_path / home.lstrip("/")
    fake_home.mkdir(parents=True)
    done = run_image_command(["cacheproxy", "ca"], {**container_env(tmp_path),
                                                  "HOME": str(fake_home)})
    assert done.returncode == 0, done.stderr
    assert f"{fake_home}/.local/share/cacheproxy/" in done.stdout


# -- the environment over the mounted config file ----------------------------------------------


def test_the_shipped_file_under_the_image_and_compose_environment_warns_of_nothing():
    """The file in config/ spells out every default: under the image's ENV and compose's
    environment (which set listen, the store, via, ...) a start says no warning, so the
    one below is read when it comes."""
    from cacheproxy.config.env_shadows import env_overrides_of_file

    services = render_compose()["services"]
    for name in ("proxy-a", "proxy-b", "origin"):
        env = {k: v for k, v in {**dockerfile_env(),
                                 **(services[name].get("environment") or {})}.items()
               if v is not None}
        assert env_overrides_of_file(ROOT / "config" / "cacheproxy.toml", env) == []


async def test_an_edit_the_environment_overrides_is_said_at_start_and_at_reload(tmp_path):
    """Was: a key edited in the mounted config file that a CACHEPROXY_* variable also sets
    (compose sets the store, redis_url, via; the image's ENV listen and pid_file) was
    silently overridden: the operator edited config/cacheproxy.toml, ran `docker compose
    exec proxy-a cacheproxy reload`, read "configuration reloaded", and nothing changed.
    The precedence stays (README, Configuration: the environment wins over the file, as
    the twelve-factor convention has it), but it is now said, at start, at each reload and
    by `cacheproxy reload`, naming the variable and the key and never a value (tokens,
    passwords in redis_url). Severity: low (a silent no-op for an operator's edit)."""
    conf = tmp_path / "cacheproxy.toml"
    conf.write_text('[proxy]\nvia = "proxy-a"\n[admin]\ntoken = "file-secret-1"\n')
    env = clean_env(CACHEPROXY_PROXY_VIA="proxy-a", CACHEPROXY_ADMIN_TOKEN="env-secret-2",
                    CACHEPROXY_PROXY_PID_FILE=str(tmp_path / "cacheproxy.pid"),
                    CACHEPROXY_PROXY_SHUTDOWN_TIMEOUT="0")
    proc, _ = await start_serve("--config", str(conf), "--upstream", "http://127.0.0.1:9",
                                cwd=tmp_path, env=env)
    try:
        conf.write_text('[proxy]\nvia = "edge-1"\n[admin]\ntoken = "file-secret-1"\n')
        told = await asyncio.to_thread(subprocess.run, [
            sys.executable, "-m", "cacheproxy", "reload", "--config", str(conf)],
            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=30)
        assert told.returncode == 0, told.stderr
        for _ in range(200):  # until the reload is logged (its own line follows the warnings)
            if b"configuration reloaded" in await _stderr_so_far(proc):
                break
        status, rest = await stop(proc)
    finally:
        if proc.returncode is None:
            proc.kill()
    err = _seen.pop(proc.pid, bytearray()).decode() + rest
    start, _, after = err.partition("listening on")
    assert "CACHEPROXY_ADMIN_TOKEN in the environment overrides admin.token" in start
    assert "proxy.via" not in start  # the file said what the environment says
    assert told.stderr == ("cacheproxy: warning: CACHEPROXY_ADMIN_TOKEN in the environment "
                           f"overrides admin.token set in {conf} (the environment wins over "
                           "the file)\ncacheproxy: warning: CACHEPROXY_PROXY_VIA in the "
                           f"environment overrides proxy.via set in {conf} (the environment "
                           "wins over the file)\n")
    assert "reload: CACHEPROXY_PROXY_VIA in the environment overrides proxy.via" in after
    assert "secret" not in told.stderr + err.replace(str(tmp_path), "")
    assert status == 0


_seen: dict[int, bytearray] = {}


async def _stderr_so_far(proc: asyncio.subprocess.Process) -> bytes:
    """What the process wrote to stderr until now (a line at a time, at most 50 ms' wait),
    kept, so that stop() still returns the rest."""
    seen = _seen.setdefault(proc.pid, bytearray())
    with contextlib.suppress(TimeoutError):
        seen += await asyncio.wait_for(proc.stderr.readline(), 0.05)  # type: ignore[union-attr]
    return bytes(seen)


# -- rebuilding the image ---------------------------------------------------------------------


def test_a_code_change_does_not_reinstall_every_dependency():
    """Was: COPY pyproject.toml README.md constraints.txt, COPY cacheproxy, then one RUN pip
    install: any change to the code or the README (every `git pull`) invalidated the layer,
    so each `docker compose up -d --build` (the README's deploy command) downloaded and
    installed every wheel again (aiohttp, cryptography, uvloop, ...; 11 s on this machine
    from a warm index). Now the pinned dependencies are installed from constraints.txt
    alone, before the code is copied. No engine here: this reads the Dockerfile's order,
    and the two pip steps were run by hand in a fresh venv (the second installs only the
    package). Severity: low (slow rebuilds, more registry traffic)."""
    steps = dockerfile_instructions()
    [deps] = [i for i, (op, args) in enumerate(steps)
              if op == "RUN" and "pip install" in args and "-r constraints.txt" in args]
    copied_before = " ".join(args for op, args in steps[:deps] if op == "COPY")
    assert copied_before.split() == ["constraints.txt", "./"], copied_before
    [package] = [i for i, (op, args) in enumerate(steps)
                 if op == "RUN" and "pip install" in args and args.rstrip().endswith(" .")]
    assert deps < package


# -- the request log on the host's disk --------------------------------------------------------


def test_the_compose_services_rotate_their_docker_logs():
    """Was: no `logging:` in docker-compose.yml, so Docker's default json-file driver kept
    every line ("by default, no log-rotation is performed", Docker's json-file driver
    documentation). The proxy writes one JSON line per request to stdout (about 480 bytes):
    at 1000 requests/s that is about 41 GB a day per replica in
    /var/lib/docker/containers/, until the host's disk is full. Each service now rotates
    (json-file, which `docker compose logs` and log shippers tailing those files read, at
    most 5 files of 50 MB). Severity: medium (a full disk on a busy host)."""
    services = render_compose()["services"]
    for name, service in services.items():
        logging = service.get("logging") or {}
        assert logging.get("driver") == "json-file", (name, logging)
        options = logging.get("options") or {}
        assert options.get("max-size") and options.get("max-file"), (name, options)


def test_an_admin_token_in_the_config_file_is_not_blanked_by_compose(tmp_path):
    """Was: compose set CACHEPROXY_ADMIN_TOKEN: "${CACHEPROXY_ADMIN_TOKEN:-}", an empty
    string when .env holds no token, and the environment wins over the file: an operator
    who put `[admin] token = "..."` in ./config/cacheproxy.toml had it blanked, so every
    admin call from the host got 403 ("loopback only") with the token they had set. Now
    the variable is passed only when .env (or the shell) sets it. Severity: low."""
    from cacheproxy.config import load_config

    conf = tmp_path / "cacheproxy.toml"
    conf.write_text('[admin]\ntoken = "from-the-file"\n')
    for dot_env, expected in ({}, "from-the-file"), (
            {"CACHEPROXY_ADMIN_TOKEN": "from-dot-env"}, "from-dot-env"):
        services = render_compose(**dot_env)["services"]
        for name in ("proxy-a", "proxy-b"):
            env = {k: v for k, v in {**dockerfile_env(),
                                     **services[name]["environment"]}.items()
                   if v is not None}  # (a variable without a value is not set)
            assert load_config(conf, env=env).admin.token == expected, (name, dot_env)
