"""A review of the configuration, CLI and environment contract (README "Configuration",
"Running it"): each test names what README promises, what the proxy did instead, why it
matters and how severe it is. The process tests run `cacheproxy serve --config FILE` for
real (no --listen flag: the file's proxy.listen is what a reload rereads)."""

from __future__ import annotations

import asyncio
import re
import ssl
import sys
import tomllib
from pathlib import Path

import aiohttp
from aiohttp import web
from processes import clean_env, free_port

from cacheproxy.config import ConfigError, load_config
from cacheproxy.config.loading import _schema, _value
from cacheproxy.config.sections import Config
from cacheproxy.proxy.server import RESTART_ONLY

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")


# --- README's tables and lists against the code ---------------------------------------------


def _readme_rows() -> dict[str, str]:
    """`section.key` -> the default column, from README's Configuration table."""
    rows = re.findall(r"^\| `([a-z]+\.[a-z_]+)` \| `(.*?)` \|", README, re.M)
    return dict(rows)


def test_readme_config_table_names_every_key_with_its_default() -> None:
    """README's Configuration table is the contract users and scripts read: every key the
    code reads is listed, no listed key is missing from the code, and each documented
    default, read as TOML and converted as a file value is, equals the code's default
    (sizes such as "256MiB" as bytes, lists, booleans, seconds). A guard so that the two
    cannot drift apart (none compared them: only config/cacheproxy.toml was checked)."""
    rows = _readme_rows()
    schema = _schema()
    code = {f"{s}.{k}" for s, section in schema.items() for k in section.settings}
    assert set(rows) == code
    defaults = Config()
    for name, text in rows.items():
        section, key = name.split(".")
        documented = tomllib.loads(f"value = {text}")["value"]
        converted = _value(name, documented, schema[section].settings[key], from_text=False)
        assert converted == getattr(getattr(defaults, section), key), name


def test_readme_restart_only_list_matches_what_a_reload_keeps() -> None:
    """README, SIGHUP: "Settings that hold sockets, processes or the store (`proxy.listen`,
    `proxy.workers`, the upstream pool's timeouts and size, `proxy.upstream_ca_file`,
    `cache.store`, `cache.redis_*`, `cache.max_bytes`, `cache.memory_layer_*`,
    `admin.prefix`, `admin.metrics_path`, `demo.listen`, `forward.ca_dir`) take effect at
    the next restart". The code (server.RESTART_ONLY) also keeps `admin.listen`,
    `cache.fill_buffer_bytes`, `proxy.send_timeout`, `proxy.shutdown_timeout` and
    `proxy.pid_file` until a restart (and says so in the log at a reload), none of which
    README lists: an operator who moves admin.listen or raises fill_buffer_bytes and
    reloads, as README's list lets them expect, finds it unchanged. Low: the log line says
    so. The fix is README's list (reviewers do not edit README)."""
    start = README.index("that hold sockets, processes or the store (")
    sentence = " ".join(README[start:README.index(") take", start)].split())
    named = set(re.findall(r"`([a-z]+\.[a-z_*]+)`", sentence))
    schema = _schema()
    keys = {f"{s}.{k}" for s, section in schema.items() for k in section.settings}
    documented = {k for pattern in named for k in keys
                  if re.fullmatch(pattern.replace(".", r"\.").replace("*", ".*"), k)}
    if "upstream pool's timeouts and size" in sentence:
        documented |= {"proxy.connect_timeout", "proxy.read_timeout",
                       "proxy.upstream_keepalive_timeout", "proxy.max_connections"}
    assert documented == set(RESTART_ONLY), sorted(set(RESTART_ONLY) ^ documented)


# --- a real `cacheproxy serve --config FILE` -------------------------------------------------


class Served:
    """`cacheproxy serve --config FILE`, its stderr collected as it comes."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.lines: list[str] = []
        self._task = asyncio.ensure_future(self._read())

    async def _read(self) -> None:
        assert self.proc.stderr is not None
        async for line in self.proc.stderr:
            self.lines.append(line.decode(errors="replace"))

    @classmethod
    async def start(cls, config: Path, port: int) -> Served:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "cacheproxy", "serve", "--config", str(config),
            cwd=config.parent, env=clean_env(), stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE, start_new_session=True)
        served = cls(proc)
        for _ in range(300):
            if proc.returncode is not None:
                await asyncio.sleep(0.1)
                raise AssertionError(f"serve exited: {''.join(served.lines)}")
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.close()
                return served
            except OSError:
                await asyncio.sleep(0.05)
        raise AssertionError("serve did not start listening")

    async def reload(self) -> str:
        """SIGHUP; the line that says how it went."""
        count = len(self.lines)
        self.proc.send_signal(1)
        for _ in range(300):
            done = [x for x in self.lines[count:]
                    if "configuration reloaded" in x or "reload refused" in x]
            if done:
                return done[0]
            await asyncio.sleep(0.02)
        raise AssertionError(f"no reload line: {''.join(self.lines)}")

    async def stop(self) -> str:
        if self.proc.returncode is None:
            self.proc.terminate()
        await asyncio.wait_for(self.proc.wait(), 20)
        await asyncio.wait_for(self._task, 5)
        return "".join(self.lines)


async def test_a_reload_that_changes_proxy_listen_keeps_proxy_pac_on_the_running_address(
        tmp_path: Path) -> None:
    """README, SIGHUP: `proxy.listen` "take[s] effect at the next restart; a reload that
    changes one says so in the log". The log said so, but proxy.pac (forward mode's PAC
    file, read by browsers to find the proxy) switched at once to the new address, where
    nothing listens: every browser configured by it lost its proxy until the restart. The
    reload's new config was handed whole to the admin API (and to forward mode's loop
    check, and the local CA's lookup) instead of the running values of the restart-only
    settings. Medium: a routine reload ahead of a planned move breaks every PAC client."""
    port, other = free_port(), free_port()
    config = tmp_path / "cacheproxy.toml"
    body = '\nupstream = "http://127.0.0.1:9"\n[forward]\nenabled = true\n'
    config.write_text(f'[proxy]\nlisten = "127.0.0.1:{port}"' + body)
    served = await Served.start(config, port)
    pac = f"http://127.0.0.1:{port}/_cacheproxy/proxy.pac"
    async with aiohttp.ClientSession() as http:
        assert f"PROXY 127.0.0.1:{port}" in await (await http.get(pac)).text()
        config.write_text(f'[proxy]\nlisten = "127.0.0.1:{other}"' + body)
        assert "configuration reloaded" in await served.reload()
        text = await (await http.get(pac)).text()
    log = await served.stop()
    assert "proxy.listen changed; it takes effect at the next restart" in log
    assert f"PROXY 127.0.0.1:{port}" in text, text


async def test_a_reload_that_changes_forward_ca_dir_keeps_intercepting_with_the_running_ca(
        tmp_path: Path) -> None:
    """README: `forward.ca_dir` takes effect at the next restart, and a reload that changes
    it says so. After such a reload the first intercepted CONNECT made (or read) a CA in the
    new directory: the listener looked the directory up in the reloaded config when it
    first needed the CA. Browsers trust the CA they imported (from the running directory),
    so every https site then failed with a certificate error until the old value was put
    back. Medium."""
    port = free_port()
    running, changed = tmp_path / "ca-running", tmp_path / "ca-changed"
    config = tmp_path / "cacheproxy.toml"
    head = (f'[proxy]\nlisten = "127.0.0.1:{port}"\nupstream = "http://127.0.0.1:9"\n'
            "[forward]\nenabled = true\nintercept_tls = true\n")
    config.write_text(head + f'ca_dir = "{running}"\n')
    served = await Served.start(config, port)
    assert (running / "ca-cert.pem").exists()
    config.write_text(head + f'ca_dir = "{changed}"\n')
    assert "configuration reloaded" in await served.reload()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"CONNECT example.invalid:443 HTTP/1.1\r\nHost: example.invalid:443\r\n\r\n")
    await writer.drain()
    assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 200")
    context = ssl.create_default_context(cafile=str(running / "ca-cert.pem"))
    try:  # the certificate shown must be signed by the CA in use (verified against it)
        await asyncio.wait_for(writer.start_tls(context, server_hostname="example.invalid"), 10)
        verified = True
    except ssl.SSLCertVerificationError:
        verified = False
    writer.close()
    log = await served.stop()
    assert "forward.ca_dir changed; it takes effect at the next restart" in log
    assert verified and not changed.exists(), log


async def test_a_reload_cannot_make_an_open_proxy_on_the_running_listen(tmp_path: Path) -> None:
    """README: forward.allow_hosts ["*"] "on a proxy.listen other machines can reach" stops
    the start naming forward.allow_hosts unless forward.open = true. The check ran on the
    reloaded file's proxy.listen, which a reload does not apply: a proxy listening on
    0.0.0.0 whose file was edited to listen on 127.0.0.1 and allow "*" took allow_hosts
    ["*"] at once, still on 0.0.0.0: an open proxy for anyone who reaches the machine,
    with "configuration reloaded" in the log. Medium (security: the guard against an open
    proxy by accident is bypassed by the order of an edit)."""
    port = free_port()
    config = tmp_path / "cacheproxy.toml"
    tail = '\nupstream = "http://127.0.0.1:9"\n[forward]\nenabled = true\n'
    config.write_text(f'[proxy]\nlisten = "0.0.0.0:{port}"' + tail
                      + 'allow_hosts = ["example.com"]\n')
    served = await Served.start(config, port)
    config.write_text(f'[proxy]\nlisten = "127.0.0.1:{port}"' + tail + 'allow_hosts = ["*"]\n')
    line = await served.reload()
    proxy = f"http://127.0.0.1:{port}"
    async with aiohttp.ClientSession() as http, \
            http.get("http://example.invalid/", proxy=proxy) as response:
        status = response.status
    await served.stop()
    assert "reload refused" in line and "forward.allow_hosts" in line, line
    assert status == 403  # the running allow_hosts still applies


# --- mistakes that must be one line, never a traceback -----------------------------------------


async def _serve_once(config: Path) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "cacheproxy", "serve", "--config", str(config),
        cwd=config.parent, env=clean_env(), stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE, start_new_session=True)
    try:
        _, err = await asyncio.wait_for(proc.communicate(), 20)
    except TimeoutError:
        proc.kill()
        _, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, err.decode(errors="replace")


async def test_a_nul_in_a_file_path_setting_is_a_config_error_naming_the_key(
        tmp_path: Path) -> None:
    """README: "A configuration mistake stops the start with exit code 2 and one line naming
    the key and the reason". A TOML "\\u0000" in proxy.pid_file, log.path or forward.ca_dir
    (a path no system call accepts) ended the start with a Python traceback (ValueError:
    embedded null byte) instead; at a reload, log.path's escaped the SIGHUP handler as an
    asyncio traceback without the "reload refused" line. Low: a typo, but the contract is
    one line naming the key."""
    port = free_port()
    head = f'[proxy]\nlisten = "127.0.0.1:{port}"\nupstream = "http://127.0.0.1:9"\n'
    cases = {
        "proxy.pid_file": 'pid_file = "run/x\\u0000.pid"\n',
        "log.path": '[log]\npath = "x\\u0000.log"\n',
        "forward.ca_dir": '[forward]\nenabled = true\nintercept_tls = true\n'
                          'ca_dir = "ca\\u0000"\n',
    }
    for key, text in cases.items():
        config = tmp_path / "cacheproxy.toml"
        config.write_text(head + text)
        code, err = await _serve_once(config)
        assert "Traceback" not in err, err
        assert code == 2 and err.count("\n") == 1 and f"config error: {key}" in err, err
        try:
            load_config(config, env={})
        except ConfigError as exc:
            assert exc.key == key
        else:
            raise AssertionError(f"{key}: no ConfigError")


async def test_a_reload_that_empties_proxy_upstream_is_refused_not_ignored(
        origin, tmp_path: Path) -> None:
    """README: proxy.upstream "empty = demo origin", and SIGHUP reloads the configuration.
    The demo origin starts only with the process, and the reload check was meant to
    refuse an empty upstream then ("is needed: ... no demo origin runs"), but it compared
    with the upstream the process started with, never empty: a reload that removed
    proxy.upstream logged "configuration reloaded" and went on sending every request to the
    old origin, so the operator was told the file was applied while it was not. Now the
    reload is refused naming proxy.upstream, and the running origin stays. Low."""
    async def answer(request: web.Request) -> web.Response:
        return web.Response(text="origin", headers={"Cache-Control": "no-store"})
    app = web.Application()
    app.router.add_get("/{tail:.*}", answer)
    up = await origin(app)
    port = free_port()
    config = tmp_path / "cacheproxy.toml"
    config.write_text(f'[proxy]\nlisten = "127.0.0.1:{port}"\nupstream = "{up.make_url("")}"\n')
    served = await Served.start(config, port)
    config.write_text(f'[proxy]\nlisten = "127.0.0.1:{port}"\nupstream = ""\n')
    line = await served.reload()
    async with aiohttp.ClientSession() as http, \
            http.get(f"http://127.0.0.1:{port}/x") as response:
        status, text = response.status, await response.text()
    await served.stop()
    assert (status, text) == (200, "origin")
    assert "reload refused" in line and "proxy.upstream" in line, line


async def test_admin_listen_on_the_proxy_listen_address_is_a_config_error(
        tmp_path: Path) -> None:
    """README: admin.listen is "an address of its own" for the admin API; set, "every path
    on proxy.listen is proxied". Set to proxy.listen's own address, it was accepted: with
    one process the start failed with "address already in use (by another process, perhaps
    another cacheproxy)" (exit 1, pointing away from the mistake), and with --workers both
    listeners bound it with SO_REUSEPORT and the kernel spread connections over them at
    random: a proxied request answered 404 by the admin app, an admin request
    (/_cacheproxy/stats) forwarded to the origin. Now it stops the start as a config error
    naming admin.listen (exit 2), as demo.listen on proxy.listen does. Medium."""
    port = free_port()
    config = tmp_path / "cacheproxy.toml"
    config.write_text(f'[proxy]\nlisten = "127.0.0.1:{port}"\nupstream = "http://127.0.0.1:9"\n'
                      f'workers = 2\n[admin]\nlisten = "127.0.0.1:{port}"\n')
    code, err = await _serve_once(config)
    assert code == 2 and "config error: admin.listen: must differ from proxy.listen" in err, err
    config.write_text(f'[proxy]\nlisten = "0.0.0.0:{port}"\nupstream = "http://127.0.0.1:9"\n'
                      f'[admin]\nlisten = "127.0.0.1:{port}"\n')
    try:
        load_config(config, env={})
    except ConfigError as exc:
        assert exc.key == "admin.listen"
    else:
        raise AssertionError("admin.listen on 0.0.0.0's port accepted")


async def test_an_admin_token_no_request_can_carry_is_a_config_error(tmp_path: Path) -> None:
    """README: admin.token is the bearer token the admin API, /metrics and PURGE require
    ("Prefer the environment: CACHEPROXY_ADMIN_TOKEN"). A token read from a secret file
    keeps its trailing newline (a Kubernetes secret from --from-file, `$(cat f; echo)`),
    and a field value can never end with one (RFC 9110 §5.5: its trailing whitespace is
    not part of it): the proxy started, and every request, with the right token too, got
    401, with nothing saying why; purge and metrics were out of reach. Now such a token
    stops the start naming admin.token (or the variable), without echoing the secret.
    Medium (an operator locked out of purge on a shared cache, silently)."""
    port = free_port()
    config = tmp_path / "cacheproxy.toml"
    config.write_text(f'[proxy]\nlisten = "127.0.0.1:{port}"\nupstream = "http://127.0.0.1:9"\n')
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "cacheproxy", "serve", "--config", str(config),
        cwd=tmp_path, env=clean_env(CACHEPROXY_ADMIN_TOKEN="s3cret\n"),
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
        start_new_session=True)
    served = Served(proc)
    for _ in range(300):
        if proc.returncode is not None:
            break
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            break
        except OSError:
            await asyncio.sleep(0.05)
    status = None
    if proc.returncode is None:
        async with aiohttp.ClientSession() as http, http.get(
                f"http://127.0.0.1:{port}/_cacheproxy/stats",
                headers={"Authorization": "Bearer s3cret"}) as response:
            status = response.status
    err = await served.stop()
    assert status is None, f"started, and the right token got {status}"
    assert proc.returncode == 2 and "config error: CACHEPROXY_ADMIN_TOKEN:" in err, err
    assert "s3cret" not in err
