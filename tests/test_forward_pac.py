"""/_cacheproxy/proxy.pac: the PAC file that points a browser at the forward proxy. Its
FindProxyForURL is run by node, with the PAC helper functions a browser provides."""

from __future__ import annotations

import json
import subprocess
from typing import Any

import pytest

from cacheproxy.config import ForwardConfig
from cacheproxy.policies.forward import ForwardAccess, canonical_host, host_refusal
from cacheproxy.policies.pac import CONTENT_TYPE, pac_proxy_address, pac_script
from cacheproxy.proxy.server import ADMIN

# What browsers give a PAC script (Mozilla's and Chromium's PAC utilities), enough of it.
_RUNNER = r"""
const vm = require("vm");
const input = JSON.parse(require("fs").readFileSync(0, "utf8"));
const context = {
  dnsDomainIs: (host, domain) =>
    host.length >= domain.length && host.substring(host.length - domain.length) === domain,
  shExpMatch: (str, pattern) => new RegExp("^" + pattern
    .replace(/[.+^${}()|[\]\\]/g, "\\$&").replace(/\*/g, ".*").replace(/\?/g, ".") + "$")
    .test(str),
  isPlainHostName: (host) => host.indexOf(".") < 0,
};
vm.runInNewContext(input.script, context);
const answers = input.cases.map(([url, host]) => context.FindProxyForURL(url, host));
process.stdout.write(JSON.stringify(answers));
"""


def find_proxy(script: str, urls: list[str]) -> list[str]:
    """FindProxyForURL(url, host) for each URL, host as a browser passes it."""
    cases = []
    for url in urls:
        authority = url.split("/", 3)[2]
        host = authority[:authority.index("]") + 1] if authority.startswith("[") \
            else authority.partition(":")[0]
        cases.append((url, host))
    done = subprocess.run(["node", "-e", _RUNNER], input=json.dumps(
        {"script": script, "cases": cases}), capture_output=True, text=True, check=True)
    return json.loads(done.stdout)


# --- the script ---------------------------------------------------------------------------------


def test_every_host_goes_through_the_proxy_by_default() -> None:
    script = pac_script("127.0.0.1:8080", ("*",), ())
    answers = find_proxy(script, ["http://example.com/", "https://www.example.org/",
                                  "http://[2001:db8::1]:81/x", "http://intranet/"])
    assert answers == ["PROXY 127.0.0.1:8080"] * 4


def test_allow_and_deny_hosts() -> None:
    script = pac_script("192.0.2.10:3128", ("example.com", "*.example.org", "2001:db8::1"),
                        ("ads.example.org",))
    answers = find_proxy(script, [
        "http://example.com/page", "http://EXAMPLE.com./page", "https://cdn.example.org/",
        "http://a.b.example.org/", "http://[2001:db8::1]/", "http://ads.example.org/banner",
        "http://www.example.com/", "http://example.org/", "http://evil-example.org/",
        "https://example.net/",
    ])
    proxy = "PROXY 192.0.2.10:3128"
    assert answers == [proxy] * 5 + ["DIRECT"] * 5


def test_the_proxys_own_pages_are_fetched_directly() -> None:
    script = pac_script("192.0.2.10:3128", ("*",), ())
    answers = find_proxy(script, ["http://192.0.2.10:3128/_cacheproxy/dashboard",
                                  "http://192.0.2.10:3129/", "http://192.0.2.10/"])
    assert answers == ["DIRECT", "PROXY 192.0.2.10:3128", "PROXY 192.0.2.10:3128"]
    on_80 = pac_script("proxy.lan:80", ("*",), ())
    assert find_proxy(on_80, ["http://proxy.lan/_cacheproxy/stats"]) == ["DIRECT"]


def test_the_pac_file_agrees_with_the_gate() -> None:
    """A host the PAC file sends to the proxy is one the proxy lets through, and back."""
    forward = ForwardConfig(allow_hosts=("example.com", "*.example.org", "10.0.0.7"),
                            deny_hosts=("ads.example.org", "*.internal.example.org"))
    gate = ForwardAccess.from_config(forward, "0.0.0.0", 3128)
    hosts = ["example.com", "www.example.com", "example.org", "cdn.example.org",
             "ads.example.org", "x.ads.example.org", "a.internal.example.org",
             "internal.example.org", "10.0.0.7", "10.0.0.8", "example.net"]
    answers = find_proxy(pac_script("proxy.lan:3128", forward.allow_hosts,
                                    forward.deny_hosts), [f"http://{h}/" for h in hosts])
    for host, answer in zip(hosts, answers, strict=True):
        allowed = host_refusal(gate, canonical_host(host)) is None
        assert (answer != "DIRECT") == allowed, host


def test_patterns_are_quoted_as_javascript() -> None:
    script = pac_script("[::1]:8080", ("*",), ())
    assert 'var PROXY = "PROXY [::1]:8080";' in script
    assert find_proxy(script, ["http://example.com/"]) == ["PROXY [::1]:8080"]


# --- the address it names -----------------------------------------------------------------------


@pytest.mark.parametrize(("args", "kwargs", "address"), [
    (("127.0.0.1", 8080, "whatever:1"), {"on_listener": True}, "127.0.0.1:8080"),
    (("::1", 8080, ""), {"on_listener": True}, "[::1]:8080"),
    (("127.0.0.1", 0, ""), {"on_listener": True, "local_port": 40123}, "127.0.0.1:40123"),
    # A wildcard listen: the host the browser fetched the PAC by; on the proxy's own
    # listener its port too (docker may map 18080 to 8080).
    (("0.0.0.0", 8080, "proxy.lan:18080"), {"on_listener": True}, "proxy.lan:18080"),
    (("0.0.0.0", 8080, "proxy.lan"), {"on_listener": True}, "proxy.lan:80"),
    (("::", 8080, "[2001:db8::5]:8080"), {"on_listener": True}, "[2001:db8::5]:8080"),
    # Served on admin.listen: the Host's port is the admin one, not the proxy's.
    (("0.0.0.0", 8080, "proxy.lan:9901"), {"on_listener": False}, "proxy.lan:8080"),
])
def test_pac_proxy_address(args: tuple[Any, ...], kwargs: dict[str, Any], address: str) -> None:
    assert pac_proxy_address(*args, **kwargs) == address


@pytest.mark.parametrize("host_field", ["", "user@proxy.lan", "bad host:80", "proxy.lan:x"])
def test_a_wildcard_listen_needs_a_usable_host(host_field: str) -> None:
    with pytest.raises(ValueError):
        pac_proxy_address("0.0.0.0", 8080, host_field, on_listener=True)


# --- served under admin.prefix ------------------------------------------------------------------


async def test_no_pac_file_when_forward_mode_is_off(proxy) -> None:
    client = await proxy("http://127.0.0.1:9")
    resp = await client.get("/_cacheproxy/proxy.pac")
    assert resp.status == 404
    assert "forward.enabled" in (await resp.json())["error"]
    client.server.app[ADMIN].set_forward(ForwardConfig(), "127.0.0.1:8080")  # still off
    assert (await client.get("/_cacheproxy/proxy.pac")).status == 404


async def test_the_pac_file_is_served_when_forward_mode_is_on(proxy) -> None:
    forward = ForwardConfig(enabled=True, allow_hosts=("*.example.com",),
                            deny_hosts=("ads.example.com",))
    client = await proxy("http://127.0.0.1:9", forward={"enabled": True})
    # The application hands [forward] and proxy.listen over at start (and on reload).
    client.server.app[ADMIN].set_forward(forward, "127.0.0.1:0")
    resp = await client.get("/_cacheproxy/proxy.pac")
    assert resp.status == 200
    assert resp.headers["Content-Type"] == CONTENT_TYPE
    assert resp.headers["Cache-Control"] == "no-store"
    port = client.server.port  # proxy.listen's port 0: the one bound
    answers = find_proxy(await resp.text(), [
        "http://www.example.com/", "http://ads.example.com/", "http://example.net/",
        f"http://127.0.0.1:{port}/_cacheproxy/dashboard"])
    assert answers == [f"PROXY 127.0.0.1:{port}", "DIRECT", "DIRECT", "DIRECT"]
    # No credentials needed: a browser fetches it with none, from any client it serves.
    assert (await client.head("/_cacheproxy/proxy.pac")).status == 200


async def test_a_wildcard_listen_names_the_host_the_browser_used(proxy) -> None:
    client = await proxy("http://127.0.0.1:9")
    client.server.app[ADMIN].set_forward(
        ForwardConfig(enabled=True, open=True), "0.0.0.0:8080")
    resp = await client.get("/_cacheproxy/proxy.pac", headers={"Host": "proxy.lan:18080"})
    assert find_proxy(await resp.text(), ["http://example.com/"]) == ["PROXY proxy.lan:18080"]
    bad = await client.get("/_cacheproxy/proxy.pac", headers={"Host": "bad host"})
    assert bad.status == 400
