"""`cacheproxy health`: the liveness probe a container runs (Docker's HEALTHCHECK, compose's
`healthcheck`), asking `healthz` where the configuration puts it.

A probe with a fixed URL (`http://127.0.0.1:8080/_cacheproxy/healthz`) is wrong as soon as
an operator moves proxy.listen, sets admin.listen (healthz moves there, and the old path on
proxy.listen is proxied to the origin) or changes admin.prefix: the container is reported
unhealthy while it serves, or the probe checks the origin instead of the proxy. This one
reads the same file and CACHEPROXY_* environment serve reads.

It never goes through an HTTP proxy: urllib would honour the http_proxy / HTTP_PROXY that
Docker's client configuration puts into every container, and send a loopback probe there.
"""

from __future__ import annotations

import http.client

from cacheproxy.config import Config, parse_listen

# A wildcard listener is asked on the loopback address of its family.
_WILDCARD = {"0.0.0.0": "127.0.0.1", "::": "::1"}


def healthz_target(config: Config, demo: bool = False) -> tuple[str, int, str]:
    """(host, port, path) of the liveness check: healthz under admin.prefix on admin.listen
    when set, else on proxy.listen; with `demo`, the demo origin's own page. ValueError
    when the address cannot be asked (port 0: the OS picked one nobody wrote down)."""
    if demo:
        key, listen, path = "demo.listen", config.demo.listen, "/"
    elif config.admin.listen:
        key, listen, path = "admin.listen", config.admin.listen, f"{config.admin.prefix}healthz"
    else:
        key, listen, path = "proxy.listen", config.proxy.listen, f"{config.admin.prefix}healthz"
    host, port = parse_listen(listen)
    if port == 0:
        raise ValueError(f"{key} is {listen!r}: port 0 is chosen at start, so there is no "
                         "port to probe; give it a fixed port")
    return _WILDCARD.get(host, host), port, path


def describe(host: str, port: int, path: str) -> str:
    return f"http://{f'[{host}]' if ':' in host else host}:{port}{path}"


def probe(host: str, port: int, path: str, timeout: float) -> str | None:
    """None when the address answers the path 200, else why not, in a few words."""
    connection = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        connection.request("GET", path, headers={"User-Agent": "cacheproxy-health"})
        response = connection.getresponse()
        response.read()
    except (OSError, http.client.HTTPException) as exc:
        return f"no answer ({exc.strerror or exc})" if isinstance(exc, OSError) \
            else f"no HTTP answer ({type(exc).__name__})"
    finally:
        connection.close()
    if response.status != 200:
        return f"answered {response.status} {response.reason}"
    return None
