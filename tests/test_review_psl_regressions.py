"""Findings of a review of the guard on credentialed CORS grants (review-psl): which
`cors.allow_origins` entries grant sites nobody listed, read against the Public Suffix
List (publicsuffix.org: the names under which anyone can have a site, ICANN's registries
and private services such as GitHub Pages), as browsers read it to keep a cookie from
being set for a whole registry (RFC 6265 §5.3 step 5). Config loads as `cacheproxy serve`
does, and the real `python -m cacheproxy serve` for what an operator sees.

Fetch §3.2.5: `Access-Control-Allow-Credentials: true` hands the granted origin the user's
cookie-authenticated answers; a grant to every site under a public suffix is a grant to
anyone who registers (or is given) a name there, which is what `*` is refused for."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_cli import assert_config_error, run_cli
from test_review_policies_regressions import credentialed

from cacheproxy.config.values import ConfigError

# Entries spelling a grant to every site under a public suffix of two or more labels.
OVER_A_PUBLIC_SUFFIX = [
    ("https://*.co.uk", "co.uk"),                       # ICANN section
    ("https://*.github.io", "github.io"),               # private section: GitHub Pages
    ("https://*.herokuapp.com", "herokuapp.com"),       # private section: Heroku apps
    ("http://*.blogspot.com:8080", "blogspot.com"),     # a port narrows nothing
    ("https://*.公司.cn", "xn--55qx5d.cn"),              # an IDN suffix, as browsers encode it
    ("https://*.foo.ck", "foo.ck"),                     # under a wildcard rule, *.ck
    ("~https://[a-z0-9-]+\\\\.co\\\\.uk", "co.uk"),
    ("~https://.*\\\\.github\\\\.io", "github.io"),
    ("~https://[a-z]+\\\\.(co|org)\\\\.uk", ".uk"),   # labels named apart
    ("~https?://[\\\\w-]+\\\\.herokuapp\\\\.com", "herokuapp.com"),
]


@pytest.mark.parametrize(("entry", "suffix"), OVER_A_PUBLIC_SUFFIX)
def test_a_credentialed_grant_over_a_public_suffix_of_two_labels_is_refused(
        tmp_path: Path, entry: str, suffix: str) -> None:
    """README, CORS, said "a public suffix of two labels, `*.co.uk`, `*.github.io`, is not
    recognised": the guard refused `https://*.com` (a single public label) but started
    with `https://*.co.uk`, `https://*.github.io` or `~https://[a-z0-9-]+\\.co\\.uk`, and
    the proxy then answered `Access-Control-Allow-Origin: https://evil.github.io` with
    `Access-Control-Allow-Credentials: true`: any GitHub Pages site, Heroku app or .co.uk
    registrant read the user's cookie-authenticated answers through it (Fetch §3.2.5;
    the same hole the guard closes for `*.com`). The Public Suffix List, both its ICANN
    and its private sections, now decides; the refusal names the key, the entry and the
    suffix. Severity: medium (a credentialed grant to strangers, from a wildcard an
    operator writes believing it narrow)."""
    with pytest.raises(ConfigError) as refused:
        credentialed(tmp_path, entry)
    assert refused.value.key == "cors.allow_origins"
    message = str(refused.value)
    assert repr(entry.replace("\\\\", "\\")) in message, message  # (as TOML reads it)
    assert suffix in message and "public suffix" in message.lower(), message


@pytest.mark.parametrize("entry", ["https://*.amazonaws.com", "~https://.+\\\\.amazonaws\\\\.com"])
def test_a_credentialed_wildcard_over_a_domain_hosting_public_suffixes_is_refused(
        tmp_path: Path, entry: str) -> None:
    """`amazonaws.com` is no public suffix itself, but hundreds under it are
    (`s3.amazonaws.com`, `*.compute.amazonaws.com`, ...): `https://*.amazonaws.com`
    matches `https://attacker.s3-website.us-east-1.amazonaws.com`, a bucket anyone can
    create, and started with credentials. A wildcard is refused when a public suffix lies
    under its domain too, naming one. Severity: medium (as above)."""
    with pytest.raises(ConfigError) as refused:
        credentialed(tmp_path, entry)
    assert refused.value.key == "cors.allow_origins"
    assert "amazonaws.com" in str(refused.value), refused.value


@pytest.mark.parametrize("entry", [
    "https://*.mycompany.co.uk", "~https://[a-z]+\\\\.mycompany\\\\.co\\\\.uk",
    "https://*.octocat.github.io", "https://*.www.ck", "https://*.app.herokuapp.com.example",
    "~https://(app|admin)\\\\.mycompany\\\\.co\\\\.uk", "https://*.partner.example",
    "http://*.localhost:3000", "https://*.corp.internal"])
def test_a_companys_own_wildcard_under_a_public_suffix_still_starts(
        tmp_path: Path, entry: str) -> None:
    """The other side: a wildcard or regex anchored to one registered name under a public
    suffix (`*.mycompany.co.uk`, one GitHub user's `*.octocat.github.io`, the exception
    `!www.ck`) belongs to one party and loads with credentials, as before."""
    credentialed(tmp_path, entry)


def test_serve_refuses_a_credentialed_github_io_wildcard_in_one_line(tmp_path: Path) -> None:
    """What an operator sees: `cacheproxy serve` exits 2 with one line naming the key, the
    entry and why, never a traceback, for a route's section as for the top level."""
    config = tmp_path / "cacheproxy.toml"
    config.write_text('[proxy]\nupstream = "http://127.0.0.1:9"\n'
                      '[[routes]]\nhost = "a.example"\nupstream = "http://127.0.0.1:9"\n'
                      '[routes.cors]\nallow_origins = ["https://app.example.com", '
                      '"https://*.github.io"]\nallow_credentials = true\n')
    result = run_cli("serve", "--config", str(config), cwd=tmp_path)
    assert_config_error(result, "routes[0].cors.allow_origins")
    assert "'https://*.github.io'" in result.stderr
    assert "public suffix" in result.stderr.lower()


@pytest.mark.parametrize("entry", ["~https://[a-z]+\\\\.co\\\\.[a-z]{2}",
                                   "~https://[\\\\w-]+\\\\.[a-z]+\\\\.uk",
                                   "~https://.+\\\\.github\\\\.[a-z]+"])
def test_a_credentialed_regex_naming_one_label_of_a_public_suffix_is_refused(
        tmp_path: Path, entry: str) -> None:
    """A regex whose other labels are a class, `~https://[a-z]+\\.co\\.[a-z]{2}` (every
    co.uk, co.jp, co.nz ... site) or `~https://[\\w-]+\\.[a-z]+\\.uk`, names only one
    label of the suffixes it covers; tried only on suffixes whose every label it names,
    it started with credentials and granted them all (Fetch §3.2.5). It is now tried on a
    site under every public suffix sharing a label with it (a few thousand at most, a few
    ms at start). Severity: medium (the same grant as `*.co.uk`, in another spelling)."""
    with pytest.raises(ConfigError) as refused:
        credentialed(tmp_path, entry)
    assert refused.value.key == "cors.allow_origins"
    assert "public suffix" in str(refused.value), refused.value

