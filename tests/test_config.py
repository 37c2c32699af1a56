"""Loading and checking the configuration: defaults, file, environment, overrides."""

import dataclasses
import os
import tomllib
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cacheproxy.config import (
    CacheConfig,
    Config,
    ConfigError,
    DemoConfig,
    ProxyConfig,
    load_config,
    parse_listen,
    parse_size,
)
from cacheproxy.config.values import usable_cores

SHIPPED = Path(__file__).resolve().parent.parent / "config" / "cacheproxy.toml"
MiB = 1024 * 1024


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "cacheproxy.toml"
    path.write_text(text, encoding="utf-8")
    return path


def load_error(tmp_path: Path, text: str = "", **kwargs: object) -> ConfigError:
    path = write(tmp_path, text)
    kwargs.setdefault("env", {})
    with pytest.raises(ConfigError) as info:
        load_config(path, **kwargs)  # type: ignore[arg-type]
    return info.value


# --- defaults and the shipped file --------------------------------------------------------------


def test_shipped_file_equals_defaults() -> None:
    assert load_config(SHIPPED, env={}) == Config()


def test_shipped_file_lists_every_option() -> None:
    document = tomllib.loads(SHIPPED.read_text(encoding="utf-8"))
    expected = {
        f.name: {g.name for g in dataclasses.fields(f.default_factory())}  # type: ignore[misc]
        for f in dataclasses.fields(Config)
        if f.name != "routes"  # [[routes]]: an array of tables, none by default
    }
    assert {section: set(table) for section, table in document.items()} == expected
    assert list(document) == list(expected)  # sections in the documented order


def test_defaults() -> None:
    config = Config()
    assert config.proxy.listen == "127.0.0.1:8080"
    assert config.proxy.upstream == ""
    assert config.cache.max_bytes == 256 * MiB
    assert config.cache.max_object_bytes == 8 * MiB
    assert config.proxy.client_body_timeout == 60.0  # nginx's client_body_timeout
    assert config.demo == DemoConfig()


def test_config_is_immutable() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        Config().cache.max_bytes = 1  # type: ignore[misc]


def test_no_file_means_defaults(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert load_config(env={}) == Config()


def test_default_path_is_read_from_current_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "cacheproxy.toml").write_text('[proxy]\nvia = "edge-1"\n')
    monkeypatch.chdir(tmp_path)
    assert load_config(env={}).proxy.via == "edge-1"


def test_env_defaults_to_os_environ(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CACHEPROXY_PROXY_VIA", "from-environ")
    assert load_config(write(tmp_path, "")).proxy.via == "from-environ"


# --- values from each source --------------------------------------------------------------------


def test_file_values(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        [proxy]
        listen = "[::1]:9000"
        upstream = "https://origin.example:8443/base"
        host_header = "pass"
        x_forwarded_for = false
        connect_timeout = 2          # an int is a fine float
        max_connections = 10
        [cache]
        shared = false
        max_bytes = "64MiB"
        max_object_bytes = 1048576
        heuristic_fraction = 0
        set_cookie = "strip"
        [demo]
        listen = "127.0.0.1:0"
        """,
    )
    config = load_config(path, env={})
    assert config.proxy == ProxyConfig(
        listen="[::1]:9000",
        upstream="https://origin.example:8443/base",
        host_header="pass",
        x_forwarded_for=False,
        connect_timeout=2.0,
        max_connections=10,
    )
    assert config.cache == CacheConfig(
        shared=False,
        max_bytes=64 * MiB,
        max_object_bytes=MiB,
        heuristic_fraction=0.0,
        set_cookie="strip",
    )
    assert isinstance(config.proxy.connect_timeout, float)
    assert config.demo.listen == "127.0.0.1:0"


def test_env_over_file(tmp_path: Path) -> None:
    path = write(tmp_path, '[proxy]\nupstream = "http://file"\n[cache]\nmax_bytes = "1MiB"\n')
    env = {
        "CACHEPROXY_PROXY_UPSTREAM": "http://env",
        "CACHEPROXY_CACHE_MAX_BYTES": "64MiB",
        "CACHEPROXY_CACHE_SET_COOKIE": "strip",
        "CACHEPROXY_PROXY_X_FORWARDED_HOST": "off",
        "CACHEPROXY_PROXY_MAX_CONNECTIONS": "12",
        "CACHEPROXY_PROXY_READ_TIMEOUT": "2.5",
        "PATH": "/usr/bin",  # not ours: ignored
    }
    config = load_config(path, env=env)
    assert config.proxy.upstream == "http://env"
    assert config.cache.max_bytes == 64 * MiB
    assert config.cache.set_cookie == "strip"
    assert config.proxy.x_forwarded_host is False
    assert config.proxy.max_connections == 12
    assert config.proxy.read_timeout == 2.5


def test_flag_over_env(tmp_path: Path) -> None:
    path = write(tmp_path, '[proxy]\nupstream = "http://file"\n')
    env = {"CACHEPROXY_PROXY_UPSTREAM": "http://env", "CACHEPROXY_PROXY_LISTEN": "0.0.0.0:1"}
    overrides = {"proxy.upstream": "http://flag", "proxy.listen": None}  # None: flag not given
    config = load_config(path, env=env, overrides=overrides)
    assert config.proxy.upstream == "http://flag"
    assert config.proxy.listen == "0.0.0.0:1"


def test_typed_overrides() -> None:
    overrides = {
        "cache.max_bytes": 10,
        "cache.max_object_bytes": "10",
        "cache.shared": "no",
        "proxy.read_timeout": 1,
    }
    config = load_config(None, env={}, overrides=overrides)
    assert (config.cache.max_bytes, config.cache.max_object_bytes) == (10, 10)
    assert config.cache.shared is False
    assert config.proxy.read_timeout == 1.0


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("true", True), ("TRUE", True), ("1", True), ("yes", True), ("On", True),
        ("false", False), ("False", False), ("0", False), ("no", False), (" off ", False),
    ],
)  # fmt: skip
def test_env_booleans(text: str, expected: bool) -> None:
    config = load_config(None, env={"CACHEPROXY_CACHE_COLLAPSE": text})
    assert config.cache.collapse is expected


# --- mistakes: each names the key and the reason -------------------------------------------------


def test_config_error_message() -> None:
    error = ConfigError("cache.max_bytes", "must be at least 1, got 0")
    assert (error.key, error.reason) == ("cache.max_bytes", "must be at least 1, got 0")
    assert str(error) == "cache.max_bytes: must be at least 1, got 0"


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ('proxy.connect_timeout = "abc"', "expected a number, got 'abc'"),
        ("proxy.connect_timeout = true", "expected a number, got True"),
        ("proxy.read_timeout = nan", "expected a number, got nan"),
        ("proxy.max_connections = 1.5", "expected an integer, got 1.5"),
        ("proxy.max_connections = true", "expected an integer, got True"),
        ('proxy.max_connections = "10"', "expected an integer, got '10'"),
        ('cache.shared = "yes"', "expected true or false, got 'yes'"),
        ("cache.shared = 1", "expected true or false, got 1"),
        ("proxy.upstream = 80", "expected a string, got 80"),
        ("proxy.listen = [1]", "expected a string, got [1]"),
        ("cache.max_bytes = 1.5", "got 1.5"),
        ("cache.max_bytes = true", "got True"),
        ('cache.max_bytes = "lots"', "got 'lots'"),
        ('cache.targeted_fields = ["Cache-Control"]', "stands in for, not one"),
        ('cache.targeted_fields = ["CDN Cache"]', "got 'CDN Cache'"),
        ('cache.targeted_fields = ["A", "a"]', "listed twice in ['A', 'a']"),
    ],
)
def test_file_type_errors(tmp_path: Path, line: str, reason: str) -> None:
    error = load_error(tmp_path, line)  # a dotted TOML key: proxy.x = 1 is [proxy] x = 1
    assert error.key == line.split(" = ")[0]
    assert error.reason.endswith(reason)


@pytest.mark.parametrize(
    ("name", "value", "reason"),
    [
        ("CACHEPROXY_PROXY_CONNECT_TIMEOUT", "abc", "expected a number, got 'abc'"),
        ("CACHEPROXY_PROXY_CONNECT_TIMEOUT", "inf", "expected a number, got 'inf'"),
        ("CACHEPROXY_PROXY_MAX_CONNECTIONS", "1.5", "expected an integer, got '1.5'"),
        ("CACHEPROXY_CACHE_SHARED", "maybe", "expected true or false, got 'maybe'"),
        ("CACHEPROXY_CACHE_MAX_BYTES", "-1", "a size cannot be negative, got '-1'"),
        ("CACHEPROXY_CACHE_MAX_BYTES", "0", "must be at least 1, got 0"),
        ("CACHEPROXY_PROXY_UPSTREAM", "ftp://x", "expected an absolute http:// or https:// URL"),
    ],
)
def test_env_errors_name_the_variable(tmp_path: Path, name: str, value: str, reason: str) -> None:
    error = load_error(tmp_path, env={name: value})
    assert error.key == name
    assert reason in error.reason


def test_unknown_key(tmp_path: Path) -> None:
    error = load_error(tmp_path, '[cache]\nmax_byte = "1MiB"\n')
    assert error.key == "cache.max_byte"
    assert error.reason == "unknown key; did you mean cache.max_bytes?"
    assert load_error(tmp_path, "[cache]\nzzz = 1\n").reason == "unknown key"


def test_unknown_section(tmp_path: Path) -> None:
    error = load_error(tmp_path, "[caches]\nmax_bytes = 1\n")
    assert (error.key, error.reason) == ("caches", "unknown section; did you mean cache?")


def test_top_level_value_is_not_a_section(tmp_path: Path) -> None:
    error = load_error(tmp_path, 'proxy = "http://x"\n')
    assert error.key == "proxy"
    assert error.reason == "expected a [proxy] table, got 'http://x'"


def test_unknown_env_var(tmp_path: Path) -> None:
    error = load_error(tmp_path, env={"CACHEPROXY_CACHE_MAX_BYTE": "1"})
    assert error.key == "CACHEPROXY_CACHE_MAX_BYTE"
    assert error.reason == "unknown environment variable; did you mean CACHEPROXY_CACHE_MAX_BYTES?"
    for name in ("CACHEPROXY_NOPE_X", "CACHEPROXY_", "CACHEPROXY_CACHE"):
        assert load_error(tmp_path, env={name: "1"}).key == name


def test_unknown_override() -> None:
    with pytest.raises(ConfigError) as info:
        load_config(None, env={}, overrides={"proxy.upstrem": "http://x"})
    assert (info.value.key, info.value.reason) == ("proxy.upstrem", "unknown key")


def test_invalid_toml(tmp_path: Path) -> None:
    error = load_error(tmp_path, "[proxy\nlisten = ")
    assert error.key == str(tmp_path / "cacheproxy.toml")
    assert error.reason.startswith("invalid TOML: ")
    binary = tmp_path / "binary.toml"
    binary.write_bytes(b"\xff\xfe[proxy]")
    with pytest.raises(ConfigError, match="invalid TOML"):
        load_config(binary, env={})


def test_missing_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    with pytest.raises(ConfigError) as info:
        load_config(missing, env={})
    assert (info.value.key, info.value.reason) == (str(missing), "file not found")


def test_directory_is_not_a_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path, env={})
    assert info.value.key == str(tmp_path)
    assert info.value.reason.startswith("cannot read the file")


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("ftp://x", "expected an absolute http:// or https:// URL, got 'ftp://x'"),
        ("not a url", "a URL cannot contain whitespace"),
        ("origin.example", "expected an absolute http:// or https:// URL"),
        ("/path", "expected an absolute http:// or https:// URL"),
        ("http://", "expected an absolute http:// or https:// URL"),
        ("http:///path", "expected an absolute http:// or https:// URL"),
        ("http://x:99999", "not a valid URL"),
    ],
)
def test_bad_upstream(tmp_path: Path, url: str, reason: str) -> None:
    error = load_error(tmp_path, f'[proxy]\nupstream = "{url}"\n')
    assert error.key == "proxy.upstream"
    assert reason in error.reason


@pytest.mark.parametrize(
    "url", ["http://127.0.0.1:3000", "https://origin.example", "http://[::1]:80/app", ""]
)
def test_good_upstream(url: str) -> None:
    assert load_config(None, env={}, overrides={"proxy.upstream": url}).proxy.upstream == url


@pytest.mark.parametrize(
    ("toml", "key", "reason"),
    [
        ("[cache]\nmax_bytes = -1", "cache.max_bytes", "a size cannot be negative, got -1"),
        ('[cache]\nmax_bytes = "-1MiB"', "cache.max_bytes", "a size cannot be negative"),
        ("[cache]\nmax_bytes = 0", "cache.max_bytes", "must be at least 1, got 0"),
        ("[cache]\nmax_object_bytes = 0", "cache.max_object_bytes", "must be at least 1, got 0"),
        ("[proxy]\nconnect_timeout = 0", "proxy.connect_timeout", "must be greater than 0"),
        ("[proxy]\nread_timeout = -1.5", "proxy.read_timeout", "must be greater than 0"),
        ("[proxy]\nclient_body_timeout = 0", "proxy.client_body_timeout",
         "must be greater than 0"),
        ("[proxy]\nmax_connections = 0", "proxy.max_connections", "must be at least 1, got 0"),
        ("[cache]\nheuristic_fraction = 1.5", "cache.heuristic_fraction", "must be at most 1"),
        ("[cache]\nheuristic_fraction = -0.1", "cache.heuristic_fraction", "must be at least 0"),
        ("[cache]\nheuristic_max_age = -1", "cache.heuristic_max_age", "must be at least 0"),
        ("[cache]\ncollapse_timeout = 0", "cache.collapse_timeout", "must be greater than 0"),
        ('[proxy]\nvia = ""', "proxy.via", "expected a non-empty token"),
        ('[proxy]\nvia = "my proxy"', "proxy.via", "expected a non-empty token"),
        ('[proxy]\nvia = "edge:1"', "proxy.via", "expected a non-empty token"),
    ],
)
def test_range_errors(tmp_path: Path, toml: str, key: str, reason: str) -> None:
    error = load_error(tmp_path, toml)
    assert error.key == key
    assert reason in error.reason


def test_max_object_bytes_over_max_bytes(tmp_path: Path) -> None:
    error = load_error(tmp_path, '[cache]\nmax_bytes = "1MiB"\nmax_object_bytes = "2MiB"\n')
    assert error.key == "cache.max_object_bytes"
    assert error.reason == "must not exceed cache.max_bytes (1048576), got 2097152"
    equal = write(tmp_path, "[cache]\nmax_bytes = 5\nmax_object_bytes = 5\n")
    assert load_config(equal, env={}).cache.max_object_bytes == 5


@pytest.mark.parametrize(
    ("section", "value", "reason"),
    [
        ("proxy", "8080", "expected HOST:PORT"),
        ("proxy", ":8080", "expected HOST:PORT"),
        ("proxy", "localhost", "expected HOST:PORT"),
        ("proxy", "localhost:http", "port must be a number from 0 to 65535, got 'http'"),
        ("proxy", "localhost:65536", "port must be a number from 0 to 65535"),
        ("proxy", "localhost:-1", "port must be a number"),
        ("proxy", "::1:8080", "an IPv6 address needs brackets"),
        ("demo", "[]:8080", "expected HOST:PORT"),
        ("demo", "local host:80", "expected HOST:PORT"),
    ],
)
def test_bad_listen(tmp_path: Path, section: str, value: str, reason: str) -> None:
    error = load_error(tmp_path, f'[{section}]\nlisten = "{value}"\n')
    assert error.key == f"{section}.listen"
    assert reason in error.reason


def test_demo_and_proxy_cannot_share_an_address(tmp_path: Path) -> None:
    text = '[proxy]\nlisten = "127.0.0.1:9000"\n[demo]\nlisten = "127.0.0.1:9000"\n'
    error = load_error(tmp_path, text)
    assert error.key == "demo.listen"
    assert "must differ from proxy.listen" in error.reason
    # With an upstream the demo does not run; port 0 never collides.
    assert load_config(write(tmp_path, text), env={}, overrides={"proxy.upstream": "http://o"})
    zero = '[proxy]\nlisten = "127.0.0.1:0"\n[demo]\nlisten = "127.0.0.1:0"\n'
    assert load_config(write(tmp_path, zero), env={})


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("proxy.host_header", "client"),
        ("proxy.host_header", "Upstream"),
        ("cache.store", "memcached"),
        ("cache.set_cookie", "keep"),
    ],
)
def test_choices(tmp_path: Path, key: str, value: str) -> None:
    section, name = key.split(".")
    error = load_error(tmp_path, f'[{section}]\n{name} = "{value}"\n')
    assert error.key == key
    assert error.reason.startswith("expected one of '")
    assert error.reason.endswith(f"got {value!r}")


# --- parse_size and parse_listen ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (0, 0),
        (512, 512),
        ("512", 512),
        ("512B", 512),
        ("64KiB", 64 * 1024),
        ("8MiB", 8 * MiB),
        ("1GiB", 1024**3),
        ("2TiB", 2 * 1024**4),
        ("10KB", 10_000),
        ("10MB", 10_000_000),
        ("1GB", 1_000_000_000),
        ("256 MiB", 256 * MiB),
        ("  8mib ", 8 * MiB),
        ("1.5KiB", 1536),
        ("1.1MB", 1_100_000),
    ],
)
def test_parse_size(value: object, expected: int) -> None:
    assert parse_size(value) == expected


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (-1, "a size cannot be negative"),
        ("-5MiB", "a size cannot be negative"),
        ("", "expected a size"),
        ("MiB", "expected a size"),
        ("1.5", "not a whole number of bytes"),
        ("1.0001KB", "not a whole number of bytes"),
        ("10 M", "unknown size unit 'M'"),
        ("10 mb/s", "expected a size"),
        ("1e6", "expected a size"),
        (True, "expected a size"),
        (1.5, "expected a size"),
        (None, "expected a size"),
        ("٣MiB", "expected a size"),  # only ASCII digits
    ],
)
def test_parse_size_rejects(value: object, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        parse_size(value)


@given(st.text())
def test_parse_size_only_raises_value_error(text: str) -> None:
    try:
        size = parse_size(text)
    except ValueError:
        return
    assert isinstance(size, int)
    assert size >= 0


@given(st.integers(min_value=0, max_value=10**6), st.sampled_from(["", "B", "KiB", "MB", "GiB"]))
def test_parse_size_of_number_and_unit(number: int, unit: str) -> None:
    factor = {"": 1, "B": 1, "KiB": 1024, "MB": 10**6, "GiB": 1024**3}[unit]
    assert parse_size(f"{number}{unit}") == number * factor


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("127.0.0.1:8080", ("127.0.0.1", 8080)),
        ("0.0.0.0:0", ("0.0.0.0", 0)),
        ("localhost:65535", ("localhost", 65535)),
        ("[::1]:8080", ("::1", 8080)),
        ("[::]:80", ("::", 80)),
    ],
)
def test_parse_listen(value: str, expected: tuple[str, int]) -> None:
    assert parse_listen(value) == expected


@given(st.text())
def test_parse_listen_only_raises_value_error(text: str) -> None:
    try:
        host, port = parse_listen(text)
    except ValueError:
        return
    assert host
    assert 0 <= port <= 65535


# --- proxy.workers = "auto" (issue 13, item 10) -------------------------------------------------


def test_workers_auto_is_the_number_of_usable_cores(tmp_path: Path) -> None:
    cores = usable_cores()
    assert 1 <= cores <= len(os.sched_getaffinity(0))
    assert load_config(write(tmp_path, '[proxy]\nworkers = "auto"\n'), env={}).proxy.workers \
        == cores
    assert load_config(None, env={"CACHEPROXY_PROXY_WORKERS": "AUTO"}).proxy.workers == cores
    assert load_config(None, env={}, overrides={"proxy.workers": "auto"}).proxy.workers == cores
    assert load_config(None, env={"CACHEPROXY_PROXY_WORKERS": " 3 "}).proxy.workers == 3


@pytest.mark.parametrize(("files", "allowed"), [
    ({"cpu.max": "150000 100000\n"}, 2),                          # cgroup v2, 1.5 CPUs
    ({"cpu.max": "max 100000\n"}, None),                          # v2, no quota
    ({"cpu/cpu.cfs_quota_us": "100000\n", "cpu/cpu.cfs_period_us": "100000\n"}, 1),  # v1
    ({"cpu,cpuacct/cpu.cfs_quota_us": "250000\n",
      "cpu,cpuacct/cpu.cfs_period_us": "100000\n"}, 3),           # v1, Docker's mount name
    ({"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, None),  # v1, none
    ({}, None),                                                    # no cgroup files at all
])
def test_workers_auto_follows_a_cgroup_cpu_quota_v1_or_v2(
        tmp_path: Path, files: dict[str, str], allowed: int | None) -> None:
    """docker run --cpus sets a quota in cgroup v2's cpu.max or, on a v1 host, in
    cpu.cfs_quota_us / cpu.cfs_period_us: "auto" starts no more workers than it allows."""
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    cores = len(os.sched_getaffinity(0))
    expected = cores if allowed is None else max(1, min(cores, allowed))
    assert usable_cores(str(tmp_path)) == expected


@pytest.mark.parametrize(("value", "reason"), [
    ('"many"', 'expected a number of processes or "auto", got \'many\''),
    ("true", 'expected a number of processes or "auto", got True'),
    ("0", "must be at least 1, got 0"),
    ("257", "must be at most 256, got 257"),
])
def test_bad_workers(tmp_path: Path, value: str, reason: str) -> None:
    error = load_error(tmp_path, f"[proxy]\nworkers = {value}\n")
    assert (error.key, error.reason) == ("proxy.workers", reason)


def test_targeted_fields_from_file_and_env(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('[cache]\ntargeted_fields = ["Surrogate-Control"]\nstrip_targeted = true\n')
    config = load_config(path, env={})
    assert config.cache.targeted_fields == ("Surrogate-Control",)
    assert config.cache.strip_targeted is True
    config = load_config(path, env={"CACHEPROXY_CACHE_TARGETED_FIELDS": ""})
    assert config.cache.targeted_fields == ()


@pytest.mark.parametrize(("value", "reason"), [
    ("nonsense", "expected HOST:PORT"), ("127.0.0.1:99999", "port must be a number")])
def test_admin_listen_is_an_address_or_empty(value: str, reason: str) -> None:
    assert load_config(None, env={}).admin.listen == ""
    with pytest.raises(ConfigError) as caught:
        load_config(None, env={"CACHEPROXY_ADMIN_LISTEN": value})
    assert caught.value.key == "CACHEPROXY_ADMIN_LISTEN" and reason in caught.value.reason


@pytest.mark.parametrize(("text", "expected"), [
    ('[80, "8000-8099"]', ((80, 80), (8000, 8099))),
    ('"443, 1025 - 65535"', ((443, 443), (1025, 65535))),
])
def test_forward_http_ports_takes_ports_and_ranges(tmp_path: Path, text: str,
                                                   expected: tuple[tuple[int, int], ...]) -> None:
    config = load_config(write(tmp_path, f"[forward]\nhttp_ports = {text}\n"), env={})
    assert config.forward.http_ports == expected


@pytest.mark.parametrize("text", ['["100-10"]', "[0]", '["80-70000"]', "[true]", '"x"', "80"])
def test_forward_http_ports_refuses_what_is_no_port_range(tmp_path: Path, text: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, f"[forward]\nhttp_ports = {text}\n"), env={})
    assert "forward.http_ports" in str(info.value)


@pytest.mark.parametrize("path", ["/_cacheproxy/stats", "/_cacheproxy/metrics"])
def test_metrics_path_under_the_admin_prefix_is_refused(tmp_path: Path, path: str) -> None:
    """The admin API answers every path under admin.prefix: /metrics there was silently
    shadowed by an admin endpoint (the stats JSON) or by the admin API's 404."""
    error = load_error(tmp_path, f'[admin]\nmetrics_path = "{path}"\n')
    assert error.key == "admin.metrics_path" and "admin.prefix" in str(error)
    moved = load_config(write(tmp_path, f'[admin]\nprefix = "/ops/"\nmetrics_path = "{path}"\n'),
                        env={})
    assert moved.admin.metrics_path == path
