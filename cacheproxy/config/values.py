"""Reading one setting: the error type, the rule a field carries, and the parsers and
checks of values (sizes, addresses, URLs, lists, origins, Referer rules)."""

from __future__ import annotations

import ipaddress
import math
import mimetypes
import os
import re
import ssl
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

from yarl import URL

from cacheproxy.config.entries import normalize_path, parse_forward_host
from cacheproxy.http.abnf import SCHEME, TOKEN_RE

DEFAULT_PATH = Path("config/cacheproxy.toml")
ENV_PREFIX = "CACHEPROXY_"
KiB = 1024
MiB = 1024 * KiB


class ConfigError(Exception):
    """A configuration mistake: `key` names where it is, `reason` says what is wrong."""

    def __init__(self, key: str, reason: str) -> None:
        super().__init__(f"{key}: {reason}")
        self.key = key
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Rule:
    """How one setting is read and checked; kept in its dataclass field's metadata."""

    size: bool = False  # an int of bytes, also written as "64MiB"
    choices: tuple[str, ...] = ()
    gt: float | None = None
    ge: float | None = None
    le: float | None = None
    check: Callable[[Any], object] | None = None  # raises ValueError(reason)
    parse: Callable[[Any], Any] | None = None  # converts the value instead of its type


def setting(default: Any, **rule: Any) -> Any:
    """A dataclass field for one setting; `rule` holds `Rule` arguments (size, choices, ...)."""
    return field(default=default, metadata={"rule": Rule(**rule)})


# --- value parsers ------------------------------------------------------------------------------

_SIZE = re.compile(r"([0-9]+(?:\.[0-9]+)?)\s*([A-Za-z]*)", re.ASCII)
_SIZE_UNITS = {
    "": 1, "b": 1,
    "kb": 1000, "mb": 1000**2, "gb": 1000**3, "tb": 1000**4,
    "kib": 1024, "mib": 1024**2, "gib": 1024**3, "tib": 1024**4,
}  # fmt: skip
_SIZE_EXAMPLE = "a size such as 1048576, '64KiB', '8MiB' or '1GB'"


def parse_size(value: object) -> int:
    """Bytes from an int or a string like "512", "64KiB", "1.5 GiB" (1024s) or "10MB" (1000s)."""
    if isinstance(value, int) and not isinstance(value, bool):
        if value < 0:
            raise ValueError(f"a size cannot be negative, got {value}")
        return value
    if not isinstance(value, str):
        raise ValueError(f"expected {_SIZE_EXAMPLE}, got {value!r}")
    text = value.strip()
    if text.startswith("-"):
        raise ValueError(f"a size cannot be negative, got {value!r}")
    match = _SIZE.fullmatch(text)
    if match is None:
        raise ValueError(f"expected {_SIZE_EXAMPLE}, got {value!r}")
    number, unit = match.groups()
    multiplier = _SIZE_UNITS.get(unit.lower())
    if multiplier is None:
        raise ValueError(
            f"unknown size unit {unit!r}; use B, KiB, MiB, GiB, TiB (powers of 1024) "
            "or KB, MB, GB, TB (powers of 1000)"
        )
    size = Fraction(number) * multiplier  # exact, unlike float: "1.1MB" is 1100000
    if size.denominator != 1:
        raise ValueError(f"not a whole number of bytes: {value!r}")
    return int(size)


_PORT = re.compile(r"[0-9]{1,5}", re.ASCII)


def parse_listen(value: str) -> tuple[str, int]:
    """(host, port) from "HOST:PORT" or "[IPv6]:PORT"; port 0 asks the OS for a free one."""
    usage = f"expected HOST:PORT such as 127.0.0.1:8080 or [::1]:8080, got {value!r}"
    if not isinstance(value, str):
        raise ValueError(usage)
    if "://" in value:  # a URL, as --upstream takes: say that, not "IPv6 needs brackets"
        raise ValueError(f"expected HOST:PORT without a scheme, such as 127.0.0.1:8080; "
                         f"got {value!r}")
    host, sep, port_text = value.rpartition(":")
    if not sep or not host:
        raise ValueError(usage)
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        # RFC 3986 §3.2.2: brackets hold an IPv6 literal, not a name or an IPv4 address.
        if host and ":" not in host:
            raise ValueError(f"brackets hold an IPv6 address, as in [::1]:8080; "
                             f"write a name or an IPv4 address without them: got {value!r}")
    elif ":" in host:
        raise ValueError(f"an IPv6 address needs brackets, as in [::1]:8080; got {value!r}")
    if not host or any(c.isspace() or c in "[]/@" for c in host):
        raise ValueError(usage)
    if _PORT.fullmatch(port_text) is None or int(port_text) > 65535:
        raise ValueError(f"port must be a number from 0 to 65535, got {port_text!r}")
    return host, int(port_text)


MAX_WORKERS = 256


def usable_cores(cgroup: str = "/sys/fs/cgroup") -> int:
    """The cores this process may run on (its CPU affinity, as nginx's `worker_processes
    auto`), fewer when a cgroup CPU quota (docker --cpus) allows less than that."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    quota = _cpu_quota(cgroup)
    if quota is not None:
        cores = min(cores, math.ceil(quota))
    return max(1, cores)


def _cpu_quota(cgroup: str) -> float | None:
    """The CPUs a cgroup quota allows (quota / period), None without one: cgroup v2's
    cpu.max ("QUOTA PERIOD", or "max PERIOD"), else cgroup v1's cpu.cfs_quota_us (-1: none)
    and cpu.cfs_period_us, where Docker on a v1 host puts them."""
    try:
        with open(os.path.join(cgroup, "cpu.max")) as file:
            quota, period = file.read().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    for controller in ("cpu", "cpu,cpuacct"):
        try:
            with open(os.path.join(cgroup, controller, "cpu.cfs_quota_us")) as file:
                quota_us = int(file.read())
            with open(os.path.join(cgroup, controller, "cpu.cfs_period_us")) as file:
                period_us = int(file.read())
        except (OSError, ValueError):
            continue
        return None if quota_us <= 0 or period_us <= 0 else quota_us / period_us
    return None


def parse_workers(value: object) -> int:
    """proxy.workers: a count, or "auto" for the number of usable cores."""
    if isinstance(value, str) and value.strip().lower() == "auto":
        return min(usable_cores(), MAX_WORKERS)
    if isinstance(value, str) and re.fullmatch(r"\s*[0-9]+\s*", value, re.ASCII):
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValueError(f'expected a number of processes or "auto", got {value!r}')
    return value


def _check_upstream(value: str) -> None:
    if value == "":
        return  # no origin given: the bundled demo origin is started instead
    if any(c.isspace() for c in value):
        raise ValueError(f"a URL cannot contain whitespace, got {value!r}")
    try:
        url = URL(value)
        url.port  # noqa: B018 -- yarl checks the port range only when it is read
    except ValueError as exc:
        raise ValueError(f"not a valid URL ({exc}): {value!r}") from None
    # yarl refuses "http://:80" and calls "http://" relative: absolute here means it has a host.
    if not url.is_absolute() or url.scheme not in ("http", "https"):
        raise ValueError(f"expected an absolute http:// or https:// URL, got {value!r}")
    if url.raw_query_string or url.raw_fragment or "?" in value or "#" in value:
        # The request's path and query are appended to it: they would land inside these.
        raise ValueError(f"an upstream URL takes no query or fragment, got {value!r}")


def masked_url(url: str) -> str:
    """url as logs show it: a password in its userinfo (sent upstream as Basic
    credentials) replaced by "***", so the process log never holds it."""
    if "@" not in url:
        return url
    try:
        parsed = URL(url)
        return str(parsed.with_password("***")) if parsed.password else url
    except ValueError:
        return url


def _check_redis_url(value: str) -> None:
    try:
        url = URL(value)
    except ValueError as exc:
        raise ValueError(f"not a valid URL ({exc}): {value!r}") from None
    if url.scheme not in ("redis", "rediss", "unix") or (url.scheme != "unix" and not url.host):
        raise ValueError(
            f"expected redis://HOST:PORT/DB, rediss://... or unix:///path, got {value!r}")


def _check_redis_prefix(value: str) -> None:
    # Purge and clear act on the keys under it: an empty prefix would reach other data.
    if not value or any(c.isspace() or c in "*?[]" for c in value):
        raise ValueError("expected a non-empty prefix without spaces or glob characters, "
                         f"such as \"cacheproxy:\", got {value!r}")


def _check_token(value: str) -> None:
    # RFC 9110 §7.6.3: a Via pseudonym is a token (§5.6.2).
    if TOKEN_RE.fullmatch(value) is None:
        raise ValueError(f"expected a non-empty token (letters, digits, -._ ...), got {value!r}")


def parse_list(value: object) -> tuple[str, ...]:
    """A list setting: a TOML list of strings, or one string split on commas (how the
    environment and flags give lists, and so `allow_headers = "*"` works in TOML too)."""
    if isinstance(value, str):
        return tuple(item.strip() for item in value.split(",") if item.strip())
    if isinstance(value, list | tuple) and all(isinstance(item, str) for item in value):
        items = tuple(item.strip() for item in value)
        if "" in items:
            raise ValueError(f"an empty entry in {list(value)!r}")
        return items
    raise ValueError(f"expected a list of strings or a comma-separated string, got {value!r}")


def _each(check: Callable[[str], object]) -> Callable[[tuple[str, ...]], None]:
    def check_all(values: tuple[str, ...]) -> None:
        for value in values:
            check(value)

    return check_all


def _check_star_alone(values: tuple[str, ...]) -> None:
    if "*" in values and len(values) > 1:
        raise ValueError(f"'*' means every one and must be alone, got {list(values)!r}")


def _check_targeted_fields(values: tuple[str, ...]) -> None:
    # RFC 9213 §2: targeted fields are response field names (tokens), each once; the
    # fields they stand in for cannot be one of them.
    for value in values:
        if TOKEN_RE.fullmatch(value) is None:
            raise ValueError(f"expected field names such as \"CDN-Cache-Control\", got {value!r}")
        if value.lower() in ("cache-control", "expires", "pragma"):
            raise ValueError(f"{value} is what a targeted field stands in for, not one")
    lowered = [v.lower() for v in values]
    if len(set(lowered)) != len(lowered):
        raise ValueError(f"a field is listed twice in {list(values)!r}")


def _check_tokens(values: tuple[str, ...]) -> None:
    # RFC 9110 §9.1, §5.1: method and field names are tokens.
    for value in values:
        if TOKEN_RE.fullmatch(value) is None:
            raise ValueError(f"expected a token (letters, digits, -._ ...), got {value!r}")
    _check_star_alone(values)


def _check_path_prefix(value: str) -> None:
    if not value.startswith("/") or any(c.isspace() or c in "?#" for c in value):
        raise ValueError(f"expected a path starting with '/', without spaces, '?' or '#', "
                         f"got {value!r}")
    if normalize_path(value) != value:  # requests are matched in this form
        raise ValueError(f"write it as {normalize_path(value)!r}, got {value!r}")


def _check_file_path(value: str) -> None:
    # No system call takes a NUL (a TOML "\u0000"): open() would raise a ValueError, a
    # traceback at start, rather than a mistake naming the key.
    if "\0" in value:
        raise ValueError(f"a file name cannot contain a NUL character, got {value!r}")


def _check_param_name(value: str) -> None:
    if any(c.isspace() or c in "&=?#" for c in value) or not value.partition("[")[0]:
        raise ValueError(f"expected a query parameter name, got {value!r}")


@dataclass(frozen=True, slots=True)
class OnInvalid:
    """referer.on_invalid, read at load: "403", a URL to redirect to (302), or a placeholder
    file answered 200 with its bytes and a Content-Type guessed from its extension."""

    text: str  # as configured
    status: int
    location: str = ""
    body: bytes = field(default=b"", repr=False)
    content_type: str = ""

    def __str__(self) -> str:
        return self.text


PLACEHOLDER_MAX_BYTES = 1 * MiB
_ON_INVALID_USAGE = '"403", an http:// or https:// URL to redirect to, or a placeholder file'


def parse_on_invalid(value: object) -> OnInvalid:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"expected {_ON_INVALID_USAGE}, got {value!r}")
    text = value.strip()
    if text == "403":
        return OnInvalid(text, 403)
    if re.fullmatch(r"[0-9]{3}", text):
        raise ValueError(f"expected {_ON_INVALID_USAGE}; 403 is the only status, got {text!r}")
    if re.match(f"{SCHEME}:", text) and not Path(text).exists():
        _check_upstream(text)  # a Location: absolute http(s), no whitespace
        return OnInvalid(text, 302, location=text)
    try:  # read now: a missing file stops the start, not the first hotlink
        with open(text, "rb") as file:
            body = file.read(PLACEHOLDER_MAX_BYTES + 1)
    except OSError as exc:
        raise ValueError(f"expected {_ON_INVALID_USAGE}; cannot read the file {text!r}: "
                         f"{exc.strerror or exc}") from None
    if len(body) > PLACEHOLDER_MAX_BYTES:
        raise ValueError(f"the placeholder file {text!r} is over 1 MiB")
    content_type = mimetypes.guess_type(text, strict=False)[0] or "application/octet-stream"
    return OnInvalid(text, 200, body=body, content_type=content_type)


# --- [forward] and TLS --------------------------------------------------------------------------


def parse_host_patterns(value: object) -> tuple[str, ...]:
    """forward.allow_hosts / deny_hosts: a list of hosts, "*.domain" or "*", each kept in
    the form requests are compared in (lowercase, IDNA, IPv6 unbracketed)."""
    patterns = tuple(parse_forward_host(entry) for entry in parse_list(value))
    _check_star_alone(patterns)
    return patterns


def parse_nameservers(value: object) -> tuple[str, ...]:
    """forward.resolver: DNS servers as "IP" or "IP:port" ("[v6]:port"), a TOML list or
    "a, b"; each kept as "IP" or "IP:port", as c-ares takes them."""
    servers = []
    for entry in parse_list(value):
        text = entry.strip()
        match = re.fullmatch(r"\[([0-9A-Fa-f:.]+)\](?::([0-9]{1,5}))?|([0-9.]+)(?::([0-9]{1,5}))?"
                             r"|([0-9A-Fa-f:.]*:[0-9A-Fa-f:.]*)", text, re.ASCII)
        if match is None:
            raise ValueError(f"expected an IP address, with a port if not 53, such as "
                             f'"127.0.0.1:5353" or "[::1]:53", got {text!r}')
        address = match[1] or match[3] or match[5]
        port = match[2] or match[4]
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            raise ValueError(f"{address!r} is no IP address (a DNS server is given by its "
                             f"address, not a name)") from None
        if port is not None and not 1 <= int(port) <= 65535:
            raise ValueError(f"port {port} of {text!r} is not 1-65535")
        shown = f"[{ip}]" if ip.version == 6 and port else str(ip)
        servers.append(f"{shown}:{int(port)}" if port else shown)
    return tuple(servers)


def parse_ports(value: object) -> tuple[int, ...]:
    """forward.connect_ports: TCP ports, a TOML list of integers or "443, 8443"."""
    if isinstance(value, str):
        items: list[object] = list(parse_list(value))
    elif isinstance(value, list | tuple):
        items = list(value)
    else:
        raise ValueError(f"expected a list of ports such as [443, 8443], got {value!r}")
    ports = []
    for item in items:
        if isinstance(item, str) and re.fullmatch(r"[0-9]{1,5}", item.strip(), re.ASCII):
            item = int(item)
        if not isinstance(item, int) or isinstance(item, bool) or not 1 <= item <= 65535:
            raise ValueError(f"a port is a number from 1 to 65535, got {item!r}")
        ports.append(item)
    return tuple(dict.fromkeys(ports))  # each once, in the order written


def parse_port_ranges(value: object) -> tuple[tuple[int, int], ...]:
    """forward.http_ports: TCP ports and ranges, a TOML list of integers and "FIRST-LAST"
    strings, or one string "80, 443, 1025-65535"; as (first, last) pairs."""
    if isinstance(value, str):
        items: list[object] = list(parse_list(value))
    elif isinstance(value, list | tuple):
        items = list(value)
    else:
        raise ValueError(f'expected a list of ports and ranges such as [80, 443, "1025-65535"]'
                         f", got {value!r}")
    ranges = []
    for item in items:
        text = item.strip() if isinstance(item, str) else None
        found = re.fullmatch(r"([0-9]{1,5})(?:\s*-\s*([0-9]{1,5}))?", text or "", re.ASCII)
        if found is not None:
            first, last = int(found[1]), int(found[2] or found[1])
        elif isinstance(item, int) and not isinstance(item, bool):
            first = last = item
        else:
            raise ValueError(f'a port is a number from 1 to 65535, a range "FIRST-LAST", '
                             f"got {item!r}")
        if not 1 <= first <= last <= 65535:
            raise ValueError(f"a port is a number from 1 to 65535 (a range, first to last), "
                             f"got {item!r}")
        ranges.append((first, last))
    return tuple(dict.fromkeys(ranges))


def _check_ca_file(value: str) -> None:
    """proxy.upstream_ca_file: read now, so a missing or garbled bundle stops the start and
    not the first https request."""
    if value == "":
        return
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    try:
        context.load_verify_locations(cafile=value)
    except ssl.SSLError:  # an OSError too: caught first
        raise ValueError(f"no PEM certificate in the CA file {value!r}") from None
    except OSError as exc:
        raise ValueError(f"cannot read the CA file {value!r}: {exc.strerror or exc}") from None
    if not context.get_ca_certs():
        raise ValueError(f"no CA certificate in the file {value!r}")


def user_data_dir(env: Mapping[str, str]) -> Path:
    """$XDG_DATA_HOME, or ~/.local/share when it is unset or relative (XDG Base Directory
    specification: a relative path there is invalid and ignored)."""
    xdg = env.get("XDG_DATA_HOME", "")
    if xdg and Path(xdg).is_absolute():
        return Path(xdg)
    home = env.get("HOME") or str(Path.home())
    return Path(home) / ".local" / "share"


def is_loopback_host(host: str) -> bool:
    """Is a listen host reachable from this machine only (127.0.0.0/8, ::1, localhost)?"""
    if host.lower().rstrip(".") == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # another name: it may resolve to anything
