"""The sections of the configuration, one frozen dataclass per TOML table, and the rules
that involve more than one setting."""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from cacheproxy.config.entries import (
    grants_anyone,
    parse_origin_entry,
    parse_referrer_policy,
    parse_valid_referer,
)
from cacheproxy.config.values import (
    MAX_WORKERS,
    ConfigError,
    MiB,
    OnInvalid,
    _check_ca_file,
    _check_file_path,
    _check_param_name,
    _check_path_prefix,
    _check_redis_prefix,
    _check_redis_url,
    _check_targeted_fields,
    _check_token,
    _check_tokens,
    _check_upstream,
    _each,
    is_loopback_host,
    parse_host_patterns,
    parse_listen,
    parse_nameservers,
    parse_on_invalid,
    parse_port_ranges,
    parse_ports,
    parse_workers,
    setting,
    user_data_dir,
)

# --- the configuration --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ProxyConfig:
    """[proxy]: where the proxy listens and how it talks to the origin."""

    listen: str = setting("127.0.0.1:8080", check=parse_listen)
    upstream: str = setting("", check=_check_upstream)
    host_header: str = setting("upstream", choices=("upstream", "pass"))
    via: str = setting("cacheproxy", check=_check_token)
    x_forwarded_for: bool = setting(True)
    x_forwarded_proto: bool = setting(True)
    x_forwarded_host: bool = setting(True)
    trust_forwarded: bool = setting(False)
    connect_timeout: float = setting(5.0, gt=0)
    read_timeout: float = setting(30.0, gt=0)
    upstream_keepalive_timeout: float = setting(4.0, gt=0)
    send_timeout: float = setting(60.0, gt=0)
    client_header_timeout: float = setting(60.0, gt=0)
    client_body_timeout: float = setting(60.0, gt=0)
    keepalive_timeout: float = setting(75.0, gt=0)
    max_client_connections: int = setting(10_000, ge=1)
    max_connections: int = setting(256, ge=1)
    # WebSocket handshakes passed to the origin, its 101 made a tunnel (proxy/upgrade.py).
    websocket: bool = setting(True)
    websocket_idle_timeout: float = setting(600.0, gt=0)  # a WebSocket carrying no byte
    workers: int = setting(1, parse=parse_workers, ge=1, le=MAX_WORKERS)  # or "auto"
    shutdown_timeout: float = setting(8.0, ge=0)
    # "" none; else `cacheproxy reload` / `stop` find it there
    pid_file: str = setting("", check=_check_file_path)
    # A PEM bundle trusted beside the system CAs for https upstreams; "" the system's only.
    upstream_ca_file: str = setting("", check=_check_ca_file)


@dataclass(frozen=True, slots=True)
class CacheConfig:
    """[cache]: what is stored, how much, and for how long."""

    store: str = setting("memory", choices=("memory", "redis"))
    redis_url: str = setting("redis://127.0.0.1:6379/0", check=_check_redis_url)
    redis_prefix: str = setting("cacheproxy:", check=_check_redis_prefix)
    redis_timeout: float = setting(0.5, gt=0)
    redis_retry_interval: float = setting(2.0, gt=0)
    memory_layer_bytes: int = setting(32 * MiB, size=True, ge=0)
    memory_layer_ttl: float = setting(1.0, ge=0)
    shared: bool = setting(True)
    max_bytes: int = setting(256 * MiB, size=True, ge=1)
    max_object_bytes: int = setting(8 * MiB, size=True, ge=1)
    fill_buffer_bytes: int = setting(64 * MiB, size=True, ge=0)
    heuristic_fraction: float = setting(0.1, ge=0, le=1)
    heuristic_max_age: float = setting(86400.0, ge=0)
    set_cookie: str = setting("bypass", choices=("bypass", "strip"))
    collapse: bool = setting(True)
    collapse_timeout: float = setting(10.0, gt=0)
    targeted_fields: tuple[str, ...] = setting(
        ("CDN-Cache-Control", "Surrogate-Control"), check=_check_targeted_fields)
    strip_targeted: bool = setting(False)


@dataclass(frozen=True, slots=True)
class DemoConfig:
    """[demo]: the bundled origin started when proxy.upstream is empty."""

    listen: str = setting("127.0.0.1:8081", check=parse_listen)


def _check_prefix(value: str) -> None:
    if not (value.startswith("/") and value.endswith("/") and len(value) > 1):
        raise ValueError(f"expected a path that starts and ends with '/', got {value!r}")
    if any(c.isspace() or c in "?#" for c in value):
        raise ValueError(f"a path prefix cannot contain spaces, '?' or '#', got {value!r}")


def _check_admin_listen(value: str) -> None:
    if value:
        parse_listen(value)


def _check_admin_token(value: str) -> None:
    # Sent as "Authorization: Bearer TOKEN" (RFC 6750 §2.1): a field value loses its
    # leading and trailing whitespace and holds no control character (RFC 9110 §5.5), so
    # such a token, e.g. a secret file's trailing newline, could never match. The value
    # itself is a secret: not repeated in the message.
    if value != value.strip() or any(ord(c) < 0x20 or ord(c) == 0x7F for c in value):
        raise ValueError("a bearer token cannot begin or end with whitespace or hold a "
                         "control character (a newline kept from a secret file?)")


def _check_metrics_path(value: str) -> None:
    if value and (not value.startswith("/") or any(c.isspace() or c in "?#" for c in value)):
        raise ValueError(f"expected an absolute path such as /metrics, or \"\", got {value!r}")


@dataclass(frozen=True, slots=True)
class LogConfig:
    """[log]: the request log, one line per request."""

    path: str = setting("", check=_check_file_path)
    format: str = setting("json", choices=("json", "text", "off"))


@dataclass(frozen=True, slots=True)
class AdminConfig:
    """[admin]: the admin API, /metrics and the dashboard, answered by the proxy itself."""

    prefix: str = setting("/_cacheproxy/", check=_check_prefix)
    token: str = setting("", check=_check_admin_token)
    metrics_path: str = setting("/metrics", check=_check_metrics_path)
    listen: str = setting("", check=_check_admin_listen)  # "": on proxy.listen


@dataclass(frozen=True, slots=True)
class CorsConfig:
    """[cors]: the CORS grant the proxy gives (Fetch standard §3.2); no origins, no CORS."""

    allow_origins: tuple[str, ...] = setting((), check=_each(parse_origin_entry))
    allow_methods: tuple[str, ...] = setting(("GET", "HEAD", "POST"), check=_check_tokens)
    allow_headers: tuple[str, ...] = setting((), check=_check_tokens)
    expose_headers: tuple[str, ...] = setting((), check=_check_tokens)
    allow_credentials: bool = setting(False)
    max_age: int = setting(600, ge=0)
    allow_private_network: bool = setting(False)
    mode: str = setting("override", choices=("override", "passthrough"))


@dataclass(frozen=True, slots=True)
class RefererConfig:
    """[referer]: hotlink protection (nginx valid_referers) and Referer leak protection."""

    protect_paths: tuple[str, ...] = setting((), check=_each(_check_path_prefix))
    valid_referers: tuple[str, ...] = setting(
        ("none", "blocked", "server_names"), check=_each(parse_valid_referer))
    on_invalid: OnInvalid = setting(  # noqa: RUF009 -- a field; OnInvalid is frozen
        OnInvalid("403", 403), parse=parse_on_invalid)
    policy: str = setting("strict-origin-when-cross-origin", check=parse_referrer_policy)
    policy_override: bool = setting(False)
    upstream_referer: str = setting("keep", choices=("keep", "origin", "strip"))
    strip_params: tuple[str, ...] = setting(
        ("gsid", "sid", "session", "sessionid", "token", "access_token"),
        check=_each(_check_param_name))


@dataclass(frozen=True, slots=True)
class ForwardConfig:
    """[forward]: a browser's proxy setting pointed at cacheproxy (absolute-form requests
    and CONNECT), and the local CA that intercepts TLS."""

    enabled: bool = setting(False)
    allow_hosts: tuple[str, ...] = setting(("*",), parse=parse_host_patterns)
    deny_hosts: tuple[str, ...] = setting((), parse=parse_host_patterns)  # wins over allow
    connect_ports: tuple[int, ...] = setting((443,), parse=parse_ports)
    intercept_tls: bool = setting(False)
    ca_dir: str = setting("", check=_check_file_path)  # "": ca_path(), the user data dir
    open: bool = setting(False)  # a non-loopback listen with allow_hosts = ["*"]
    tunnel_idle_timeout: float = setting(600.0, gt=0)  # a tunnel carrying no byte
    # The DNS servers forward mode's lookups go to (its own asynchronous client, as
    # Squid's dns_nameservers and nginx's resolver); empty: those of /etc/resolv.conf.
    resolver: tuple[str, ...] = setting((), parse=parse_nameservers)
    # Where absolute-form requests may go: Squid's Safe_ports but for the schemes this
    # proxy does not speak (ftp, gopher, wais); an HTTP request to :25 or :22 would be
    # read as that protocol's commands (cross-protocol).
    http_ports: tuple[tuple[int, int], ...] = setting(
        ((80, 80), (280, 280), (443, 443), (488, 488), (591, 591), (777, 777),
         (1025, 65535)), parse=parse_port_ranges)

    def ca_path(self, env: Mapping[str, str]) -> Path:
        """Where the CA lives: ca_dir ("~" is the user's home), or "" for
        $XDG_DATA_HOME/cacheproxy (~/.local/share/cacheproxy)."""
        if not self.ca_dir:
            return user_data_dir(env) / "cacheproxy"
        if self.ca_dir == "~" or self.ca_dir.startswith("~/"):
            home = env.get("HOME") or str(Path.home())
            return Path(home) / self.ca_dir[2:]
        return Path(self.ca_dir)


@dataclass(frozen=True, slots=True, kw_only=True)
class RouteConfig:
    """One [[routes]] table. Its sections are the top-level ones with its own keys replaced."""

    host: str = ""  # "" any host, "example.com", or "*.example.com"; lowercase, no port
    path_prefix: str = "/"
    upstream: str
    cache: CacheConfig = field(default_factory=CacheConfig)
    cors: CorsConfig = field(default_factory=CorsConfig)
    referer: RefererConfig = field(default_factory=RefererConfig)


@dataclass(frozen=True, slots=True)
class Config:
    """Everything, one section per table; config/cacheproxy.toml documents each key."""

    proxy: ProxyConfig = field(default_factory=ProxyConfig)
    cache: CacheConfig = field(default_factory=CacheConfig)
    demo: DemoConfig = field(default_factory=DemoConfig)
    log: LogConfig = field(default_factory=LogConfig)
    admin: AdminConfig = field(default_factory=AdminConfig)
    cors: CorsConfig = field(default_factory=CorsConfig)
    referer: RefererConfig = field(default_factory=RefererConfig)
    forward: ForwardConfig = field(default_factory=ForwardConfig)
    routes: tuple[RouteConfig, ...] = ()  # [[routes]]: in the file only, not a [section]

    @property
    def catch_all_route(self) -> bool:
        """Does a route take every request (any host, path "/")? proxy.upstream is unused."""
        return any(not r.host and r.path_prefix == "/" for r in self.routes)


# Fetch "normalize a method": these are byte-upper-cased by browsers.
_FETCH_NORMALISED = frozenset({"DELETE", "GET", "HEAD", "OPTIONS", "POST", "PUT"})
def _check_sections(cache: CacheConfig, cors: CorsConfig, referer: RefererConfig,
                    prefix: str = "") -> None:
    """Rules across settings of the sections a route can override; `prefix` "routes[1]."."""
    if cache.max_object_bytes > cache.max_bytes:
        raise ConfigError(
            f"{prefix}cache.max_object_bytes",
            f"must not exceed cache.max_bytes ({cache.max_bytes}), got {cache.max_object_bytes}",
        )
    if cors.allow_credentials and "*" in cors.allow_origins:
        raise ConfigError(
            f"{prefix}cors.allow_origins",
            "'*' cannot go with allow_credentials = true: browsers refuse a credentialed "
            "response whose Access-Control-Allow-Origin is '*' (Fetch standard §3.2.5); list "
            f"the origins to trust instead, got {list(cors.allow_origins)!r}",
        )
    for entry in cors.allow_origins if cors.allow_credentials else ():
        if entry not in ("*", "null") and (why := grants_anyone(entry)) is not None:
            raise ConfigError(
                f"{prefix}cors.allow_origins",
                f"{entry!r} cannot go with allow_credentials = true: {why}, so it would grant "
                "every such site your users' credentials, which is what '*' is refused for "
                "(Fetch standard §3.2.5); list the origins or write a narrower pattern "
                "(one company's own name, such as 'https://*.mycompany.co.uk')",
            )
    if cors.allow_credentials and "null" in cors.allow_origins:
        raise ConfigError(
            f"{prefix}cors.allow_origins",
            "'null' cannot go with allow_credentials = true: any site can send Origin: null "
            "(a sandboxed iframe does), so it would grant every site your users' "
            "credentials, which is what '*' is refused for",
        )
    lowercase = [m for m in cors.allow_methods
                 if m.upper() in _FETCH_NORMALISED and m != m.upper()]
    if lowercase:
        raise ConfigError(
            f"{prefix}cors.allow_methods",
            f"write {', '.join(repr(m.upper()) for m in lowercase)}: browsers send these "
            "methods upper-cased (Fetch: normalize a method), so the lower-case form never "
            "matches",
        )
    if cors.allow_credentials and "*" in cors.expose_headers:
        raise ConfigError(
            f"{prefix}cors.expose_headers",
            "'*' cannot go with allow_credentials = true: browsers then read it as a header "
            "named '*' (Fetch standard §3.2.3); list the header names",
        )
    if referer.protect_paths and not referer.valid_referers:
        raise ConfigError(
            f"{prefix}referer.valid_referers",
            "is empty, so every request for referer.protect_paths would be refused",
        )


def _check_across(config: Config) -> None:
    """Rules that involve more than one setting, checked once everything is merged."""
    _check_sections(config.cache, config.cors, config.referer)
    demo_address = parse_listen(config.demo.listen)
    demo_runs = not config.proxy.upstream
    if demo_runs and demo_address[1] != 0 and demo_address == parse_listen(config.proxy.listen):
        raise ConfigError(
            "demo.listen",
            f"must differ from proxy.listen ({config.proxy.listen}): with no "
            "proxy.upstream the demo origin listens beside the proxy",
        )
    check_forward(config.forward, config.proxy.listen)
    admin = config.admin
    if admin.listen:
        _check_admin_apart(admin.listen, config.proxy.listen, "proxy.listen")
        if demo_runs:
            _check_admin_apart(admin.listen, config.demo.listen, "demo.listen")
    if admin.metrics_path.startswith(admin.prefix):
        # The admin API answers every path under its prefix (its own names first, then
        # a 404): /metrics there would be shadowed, or shadow one of them.
        raise ConfigError(
            "admin.metrics_path",
            f"{admin.metrics_path!r} is under admin.prefix ({admin.prefix!r}), whose paths "
            "are the admin API's: choose a path outside it",
        )


def _check_admin_apart(admin_listen: str, other: str, name: str) -> None:
    """admin.listen on the address of another listener: with --workers both bind it with
    SO_REUSEPORT, and the kernel spreads connections over the admin API and the proxy at
    random (admin paths forwarded upstream, proxied ones answered 404); with one process
    the start fails as if another program held it. A wildcard host covers every address of
    its family: a listener on [::] is IPv6-only (IPV6_V6ONLY, as the proxy binds it), so
    127.0.0.1:8080 beside [::]:8080 is an address of its own, as 0.0.0.0 is beside [::1]."""
    (host, port), (other_host, other_port) = parse_listen(admin_listen), parse_listen(other)
    if port == 0 or port != other_port:
        return
    mine, theirs = _bound(host, port), _bound(other_host, port)
    if host == other_host or "*" in (host, other_host) or mine & theirs \
            or _covers(mine, theirs) or _covers(theirs, mine):
        raise ConfigError(
            "admin.listen",
            f"must differ from {name} ({other}): the admin API needs an address of its own",
        )


def _covers(wildcards: frozenset[str], addresses: frozenset[str]) -> bool:
    """Whether a wildcard among the first listener's addresses binds one of the second's:
    0.0.0.0 every IPv4 address, :: every IPv6 one (and no IPv4: IPV6_V6ONLY)."""
    return ("0.0.0.0" in wildcards and any(":" not in a for a in addresses)) \
        or ("::" in wildcards and any(":" in a for a in addresses))


def _bound(host: str, port: int) -> frozenset[str]:
    """The addresses a listener on host binds, as the server's bind resolves it (a name:
    each address it resolves to, "localhost" 127.0.0.1 and ::1; an IPv6 address in any
    spelling, RFC 5952's); none when it cannot be told (the bind then says why)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                   flags=socket.AI_PASSIVE)
    except (OSError, UnicodeError):
        return frozenset()
    return frozenset(str(ipaddress.ip_address(str(info[4][0]).partition("%")[0]))
                     for info in infos)


def check_forward(forward: ForwardConfig, listen: str) -> None:
    """Nobody runs an open proxy by accident: reachable from other machines, forward mode
    needs a narrower allow_hosts or an explicit forward.open = true."""
    if not forward.enabled or forward.open or forward.allow_hosts != ("*",):
        return
    host, _ = parse_listen(listen)
    if not is_loopback_host(host):
        raise ConfigError(
            "forward.allow_hosts",
            f'is ["*"] and proxy.listen ({listen}) is reachable from other machines: anyone '
            "there could use this proxy to reach any host (an open proxy). List the hosts "
            "clients may reach, or set forward.open = true if that is what you want",
        )
