"""[forward] and proxy.upstream_ca_file: defaults, the environment, the checks that name
the key, and the start-up rule against an accidental open proxy."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from cacheproxy.config import Config, ConfigError, ForwardConfig, load_config


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "cacheproxy.toml"
    path.write_text(text, encoding="utf-8")
    return path


def load(tmp_path: Path, text: str = "", env: dict[str, str] | None = None) -> Config:
    return load_config(write(tmp_path, text), env=env or {})


def error(tmp_path: Path, text: str = "", env: dict[str, str] | None = None) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load(tmp_path, text, env)
    return info.value


def test_defaults() -> None:
    forward = Config().forward
    assert forward == ForwardConfig(enabled=False, allow_hosts=("*",), deny_hosts=(),
                                    connect_ports=(443,), intercept_tls=False, ca_dir="",
                                    open=False)
    assert Config().proxy.upstream_ca_file == ""


def test_every_key_from_the_file(tmp_path: Path) -> None:
    forward = load(tmp_path, """
        [forward]
        enabled = true
        allow_hosts = ["Example.COM", "*.example.org", "10.0.0.7", "[::1]", "bücher.example"]
        deny_hosts = ["ads.example.org"]
        connect_ports = [443, 8443, 443]
        intercept_tls = true
        ca_dir = "/srv/ca"
        open = true
    """).forward
    # Kept in the form requests are compared in: lowercase, IDNA, IPv6 unbracketed.
    assert forward.allow_hosts == ("example.com", "*.example.org", "10.0.0.7", "::1",
                                   "xn--bcher-kva.example")
    assert forward.deny_hosts == ("ads.example.org",)
    assert forward.connect_ports == (443, 8443)  # each once
    assert (forward.enabled, forward.intercept_tls, forward.open) == (True, True, True)
    assert forward.ca_dir == "/srv/ca"


def test_every_key_from_the_environment(tmp_path: Path) -> None:
    # CACHEPROXY_FORWARD_<KEY> comes from the loader: nothing forward-specific in it.
    forward = load(tmp_path, env={
        "CACHEPROXY_FORWARD_ENABLED": "yes",
        "CACHEPROXY_FORWARD_ALLOW_HOSTS": "example.com, *.example.net",
        "CACHEPROXY_FORWARD_DENY_HOSTS": "bad.example.net",
        "CACHEPROXY_FORWARD_CONNECT_PORTS": "443, 8443",
        "CACHEPROXY_FORWARD_INTERCEPT_TLS": "true",
        "CACHEPROXY_FORWARD_CA_DIR": "/var/lib/cacheproxy",
        "CACHEPROXY_FORWARD_OPEN": "1",
        "CACHEPROXY_FORWARD_TUNNEL_IDLE_TIMEOUT": "90",
    }).forward
    assert forward == ForwardConfig(True, ("example.com", "*.example.net"),
                                    ("bad.example.net",), (443, 8443), True,
                                    "/var/lib/cacheproxy", True, 90.0)


def test_tunnel_idle_timeout_must_be_positive(tmp_path: Path) -> None:
    assert error(tmp_path, "[forward]\ntunnel_idle_timeout = 0\n").key == \
        "forward.tunnel_idle_timeout"


def test_empty_connect_ports_allow_no_tunnel(tmp_path: Path) -> None:
    assert load(tmp_path, "[forward]\nconnect_ports = []\n").forward.connect_ports == ()
    assert load(tmp_path, env={"CACHEPROXY_FORWARD_CONNECT_PORTS": ""}
                ).forward.connect_ports == ()


@pytest.mark.parametrize(("line", "key", "reason"), [
    ('allow_hosts = ["exa*mple.com"]', "forward.allow_hosts", "wildcard"),
    ('allow_hosts = ["*.ex\\"ample.org"]', "forward.allow_hosts", "'*.ex\"ample.org'"),
    ('allow_hosts = ["example.com:8080"]', "forward.allow_hosts", "without a port"),
    ('allow_hosts = ["*", "example.com"]', "forward.allow_hosts", "must be alone"),
    ('allow_hosts = [""]', "forward.allow_hosts", "empty"),
    ('allow_hosts = "ex ample.com"', "forward.allow_hosts", "host name"),
    ("allow_hosts = [1]", "forward.allow_hosts", "list of strings"),
    ('deny_hosts = ["http://example.com/"]', "forward.deny_hosts", "host"),
    ("connect_ports = [0]", "forward.connect_ports", "1 to 65535"),
    ("connect_ports = [65536]", "forward.connect_ports", "1 to 65535"),
    ('connect_ports = ["https"]', "forward.connect_ports", "1 to 65535"),
    ("connect_ports = [true]", "forward.connect_ports", "1 to 65535"),
    ("connect_ports = 443", "forward.connect_ports", "list of ports"),
    ('enabled = "maybe"', "forward.enabled", "true or false"),
    ("ca_dir = 7", "forward.ca_dir", "string"),
    ("opn = true", "forward.opn", "did you mean forward.open"),
])
def test_mistakes_name_the_key(tmp_path: Path, line: str, key: str, reason: str) -> None:
    exc = error(tmp_path, f"[forward]\n{line}\n")
    assert exc.key == key
    assert reason in exc.reason


def test_environment_mistake_names_the_variable(tmp_path: Path) -> None:
    exc = error(tmp_path, env={"CACHEPROXY_FORWARD_CONNECT_PORTS": "443,x"})
    assert exc.key == "CACHEPROXY_FORWARD_CONNECT_PORTS"


# --- no open proxy by accident ------------------------------------------------------------------


@pytest.mark.parametrize("listen", ["0.0.0.0:8080", "[::]:8080", "192.0.2.7:3128",
                                    "proxy.internal:8080"])
def test_reachable_forward_proxy_needs_allow_hosts_or_open(tmp_path: Path, listen: str) -> None:
    text = f'[proxy]\nlisten = "{listen}"\n[forward]\nenabled = true\n'
    exc = error(tmp_path, text)
    assert exc.key == "forward.allow_hosts"
    assert "forward.open = true" in exc.reason and listen in exc.reason
    assert load(tmp_path, text + "open = true\n").forward.open
    narrowed = load(tmp_path, text + 'allow_hosts = ["*.example.com"]\n')
    assert narrowed.forward.allow_hosts == ("*.example.com",)


def test_the_rule_holds_for_the_environment_too(tmp_path: Path) -> None:
    env = {"CACHEPROXY_PROXY_LISTEN": "0.0.0.0:8080", "CACHEPROXY_FORWARD_ENABLED": "true"}
    assert error(tmp_path, env=env).key == "forward.allow_hosts"
    assert load(tmp_path, env={**env, "CACHEPROXY_FORWARD_OPEN": "true"}).forward.enabled


@pytest.mark.parametrize("listen", ["127.0.0.1:8080", "127.0.0.2:8080", "[::1]:8080",
                                    "localhost:8080"])
def test_loopback_forward_proxy_may_allow_every_host(tmp_path: Path, listen: str) -> None:
    config = load(tmp_path, f'[proxy]\nlisten = "{listen}"\n[forward]\nenabled = true\n')
    assert config.forward.allow_hosts == ("*",)


def test_disabled_forward_mode_asks_nothing(tmp_path: Path) -> None:
    assert not load(tmp_path, '[proxy]\nlisten = "0.0.0.0:8080"\n').forward.enabled


# --- where the CA lives -------------------------------------------------------------------------


def test_ca_path_defaults_to_the_user_data_directory() -> None:
    forward = ForwardConfig()
    assert forward.ca_path({"XDG_DATA_HOME": "/data", "HOME": "/home/u"}) == Path(
        "/data/cacheproxy")
    assert forward.ca_path({"HOME": "/home/u"}) == Path("/home/u/.local/share/cacheproxy")
    # XDG Base Directory: a relative (or empty) XDG_DATA_HOME is ignored.
    assert forward.ca_path({"XDG_DATA_HOME": "data", "HOME": "/home/u"}) == Path(
        "/home/u/.local/share/cacheproxy")
    assert forward.ca_path({"XDG_DATA_HOME": "", "HOME": "/home/u"}) == Path(
        "/home/u/.local/share/cacheproxy")


def test_ca_path_as_configured() -> None:
    assert ForwardConfig(ca_dir="/srv/ca").ca_path({}) == Path("/srv/ca")
    assert ForwardConfig(ca_dir="~/ca").ca_path({"HOME": "/home/u"}) == Path("/home/u/ca")
    assert ForwardConfig(ca_dir="state/ca").ca_path({}) == Path("state/ca")


# --- proxy.upstream_ca_file ---------------------------------------------------------------------


def test_upstream_ca_file_is_read_at_load(tmp_path: Path) -> None:
    pem = tmp_path / "company-ca.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
         "-nodes", "-keyout", str(tmp_path / "key.pem"), "-out", str(pem), "-days", "2",
         "-subj", "/CN=company CA"], check=True, capture_output=True)
    config = load(tmp_path, f'[proxy]\nupstream_ca_file = "{pem}"\n')
    assert config.proxy.upstream_ca_file == str(pem)


@pytest.mark.parametrize(("content", "reason"), [
    (None, "cannot read the CA file"),
    (b"not a certificate\n", "no PEM certificate"),
    (b"", "no PEM certificate"),
])
def test_unreadable_upstream_ca_file_names_the_key(
        tmp_path: Path, content: bytes | None, reason: str) -> None:
    path = tmp_path / "ca.pem"
    if content is not None:
        path.write_bytes(content)
    exc = error(tmp_path, f'[proxy]\nupstream_ca_file = "{path}"\n')
    assert exc.key == "proxy.upstream_ca_file"
    assert reason in exc.reason and str(path) in exc.reason
    env_exc = error(tmp_path, env={"CACHEPROXY_PROXY_UPSTREAM_CA_FILE": str(path)})
    assert env_exc.key == "CACHEPROXY_PROXY_UPSTREAM_CA_FILE"
