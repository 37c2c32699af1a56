"""Regressions found reviewing the CORS and Referer policies as a security reviewer reads them
(review-policies): the Fetch standard's CORS protocol, the W3C Referrer Policy, and what
nginx, Squid and Varnish do.

Each test says what is expected and why, with the section of the standard it follows.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from support import proxy_for_toml as start
from support import raw_get, read_json_log
from test_review_cors_regressions import Recording

from cacheproxy.config import load_config
from cacheproxy.config.values import ConfigError


def _load(tmp_path: Path, body: str) -> None:
    path = tmp_path / "cacheproxy.toml"
    path.write_text('[proxy]\nupstream = "http://127.0.0.1:9"\n' + body)
    load_config(path, env={})


def credentialed(tmp_path: Path, entry: str) -> None:
    """Start-up's load of a config granting the allow_origins entry with credentials."""
    _load(tmp_path, f'[cors]\nallow_origins = ["{entry}"]\nallow_credentials = true\n')


def refused_with_credentials(tmp_path: Path, entry: str) -> str:
    """The key a config granting entry with credentials is refused for (ConfigError)."""
    with pytest.raises(ConfigError) as refused:
        credentialed(tmp_path, entry)
    return refused.value.key


@pytest.mark.parametrize("entry", ["~https://.*", "~https://.+", "https://*.com"])
def test_a_credentialed_grant_to_every_https_site_is_refused_at_start(tmp_path, entry):
    """`allow_credentials = true` with `*` is refused at start (Fetch §3.2.5), and so,
    README says, is "a ~regex that matches any origin". The check only refused a pattern
    that matched both an https and an http probe origin: `~https://.*` (or `.+`) matches
    every https site, which is every site an attacker would use, and passed; so did the
    wildcard `https://*.com`, which covers every .com site. Either hands any such page a
    credentialed read of the user's responses through the proxy (the proxy echoes the
    requesting Origin with Access-Control-Allow-Credentials: true). The start must stop,
    naming the key, for the top-level section and a route's. Severity: medium (a guard
    the README promises, missed for the most common catch-all spelling)."""
    assert refused_with_credentials(tmp_path, entry) == "cors.allow_origins"
    with pytest.raises(ConfigError) as routed:
        _load(tmp_path, '[[routes]]\nhost = "a.example"\nupstream = "http://127.0.0.1:9"\n'
                        f'[routes.cors]\nallow_origins = ["{entry}"]\n'
                        'allow_credentials = true\n')
    assert routed.value.key == "routes[0].cors.allow_origins"


@pytest.mark.parametrize("entry", [
    "~https://pr-[0-9]+\\\\.preview\\\\.example", "https://*.partner.example",
    "http://*.localhost:3000", "~https?://(app|admin)\\\\.example\\\\.com"])
def test_narrow_credentialed_grants_still_start(tmp_path, entry):
    """The other side of the check above: patterns and wildcards anchored to the operator's
    own domains (and *.localhost, the loopback names of RFC 6761 §6.3) still load."""
    credentialed(tmp_path, entry)


LOGGED = """
[proxy]
upstream = "{up}"
[referer]
strip_params = ["sid", "jsessionid"]
[log]
path = "LOG"
"""


async def _logged_proxy(origin, proxy, tmp_path, up):
    toml = LOGGED.replace("LOG", str(tmp_path / "access.log"))
    return await start(origin, proxy, tmp_path, toml, up=up)


async def test_the_request_log_does_not_keep_a_password_from_the_referer(
        origin, proxy, tmp_path):
    """W3C Referrer Policy §8.3 (and Fetch's "strip url for use as a referrer"): a
    Referer never carries a username or password, and the proxy drops a `user:password@`
    from the Referer it forwards upstream for that reason. The request log wrote the same
    Referer as it came, password and all (`"referer": "https://alice:hunter2@..."`), on
    misses and on hits, where anyone who reads the log or the files it is shipped to sees
    it; the log already hides strip_params values for the same reason. Browsers never
    send one, so it comes from scripts and crawlers (curl -e). Severity: low."""
    up = Recording("public, max-age=60")
    c = await _logged_proxy(origin, proxy, tmp_path, up)
    referer = "https://alice:hunter2@good.example/page"
    for _ in range(2):  # a miss, then a hit (each path writes its own line)
        assert (await c.get("/r", headers={"Referer": referer})).status == 200
    assert up.referers == ["https://good.example/page"]  # what the upstream saw
    lines = [line for line in await read_json_log(c) if line["path"] == "/r"]
    assert [line["cache"] for line in lines] == ["MISS", "HIT"]
    for line in lines:
        assert "hunter2" not in line["referer"], line
        assert line["referer"].endswith("good.example/page")


async def test_a_session_id_in_a_path_parameter_is_stripped_like_one_in_the_query(
        origin, proxy, tmp_path):
    """Servlet containers (Tomcat, Jetty) put the session id in the URL as a path parameter,
    `/cart;jsessionid=ABC123?x=1` (RFC 3986 §3.3: ";" inside a segment), the textbook
    session id that leaks through Referer (OWASP, CWE-598). With "jsessionid" in
    referer.strip_params, the proxy removed it from a Referer's query (`?jsessionid=`,
    `&jsessionid=`, `;jsessionid=` after "?") but forwarded `;jsessionid=ABC123` in the path
    to the upstream untouched, and wrote it in the request log, in the Referer and in the
    request's own target alike. Expected: gone from the forwarded Referer (the rest byte for
    byte), and REDACTED in the log. Severity: medium (a configured secret sent on)."""
    up = Recording("public, max-age=60")
    c = await _logged_proxy(origin, proxy, tmp_path, up)
    referer = "https://shop.example/cart;jsessionid=ABC123;v=2?x=1&sid=S1"
    assert (await c.get("/r", headers={"Referer": referer})).status == 200
    assert up.referers == ["https://shop.example/cart;v=2?x=1"]
    assert (await c.get("/p;jsessionid=XYZ789?y=1")).status == 200
    lines = await read_json_log(c)
    text = "\n".join(f"{line['path']} {line['referer']}" for line in lines)
    for secret in ("ABC123", "XYZ789", "S1"):
        assert secret not in text, text
    assert lines[0]["referer"] == \
        "https://shop.example/cart;jsessionid=REDACTED;v=2?x=1&sid=REDACTED"
    assert lines[1]["path"] == "/p;jsessionid=REDACTED?y=1"


@pytest.mark.parametrize(("forward", "target"), [
    ("", "http://user:pw@127.0.0.1/p?sid=Q1"), ("", "/../p?sid=Q1"),
    ('[forward]\nenabled = true\ndeny_hosts = ["blocked.example"]\n',
     "http://blocked.example/p?sid=Q1")])
async def test_a_request_refused_before_routing_is_logged_with_its_secrets_redacted(
        origin, proxy, tmp_path, forward, target):
    """A request the proxy refuses before it chooses a route (400 "invalid Host or request
    target": userinfo in an absolute-form URI, RFC 9110 §4.2.4; a path climbing above the
    root; in forward mode a host deny_hosts refuses, 403) was logged with no strip_params
    to redact: its own `?sid=` and the Referer's
    `?sid=` went into the log in clear, where every routed request has them REDACTED and
    the parser's own 400s drop the query. The names of every route apply when none was
    chosen. Severity: low (a malformed request's secrets, in the log file)."""
    toml = (LOGGED + forward).replace("LOG", str(tmp_path / "access.log"))
    c = await start(origin, proxy, tmp_path, toml, up=Recording("public, max-age=60"))
    status, _, _ = await raw_get(c, target, "Referer: https://site.example/inbox?sid=SECRET",
                                 host="127.0.0.1")
    assert status == (403 if forward else 400)
    [line] = await read_json_log(c)
    assert line["status"] == status
    assert "Q1" not in line["path"] and "pw" not in line["path"], line
    assert line["referer"] == "https://site.example/inbox?sid=REDACTED"
