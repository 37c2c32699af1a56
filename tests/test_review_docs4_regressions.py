"""Findings of a review of this session's README sections against what the code does
(review-docs4): CORS catch-alls refused with credentials, strip_params in path parameters,
event streams and long polls, Redis's key generations, h2c and HTTP/2's preface. Real
proxy in front of aiohttp origins (or bytes of the test's choosing), all on 127.0.0.1.
The tests of a defect failed on the code they were written against (d2401d0); those that
pin behaviour the README words differently say which sentence to change."""

from __future__ import annotations

from pathlib import Path

import pytest

from cacheproxy.config import load_config
from cacheproxy.config.values import ConfigError

# -- 1. CORS: a credentialed regex over a top-level domain without a hyphen in its class -----


@pytest.mark.parametrize("entry", ["~https://[a-z]+\\\\.com", "~https://[a-z0-9]+\\\\.com",
                                   "~https://\\\\w+\\\\.com", "~https://[a-z]{3,12}\\\\.com"])
def test_a_credentialed_regex_over_com_names_without_hyphens_is_refused_at_start(
        tmp_path: Path, entry: str) -> None:
    """README, CORS: "With credentials, every catch-all is refused at start, as `*` is:
    ... a wildcard over a top-level domain (`https://*.com`, or as a regex,
    `~https://.*\\\\.com`...)". A regex is tried on one name under each top-level domain
    it names, `cacheproxy-probe.com`; a pattern whose class has no hyphen
    (`~https://[a-z]+\\\\.com`, `\\\\w+`) does not match that name, so it started, and then
    granted `Access-Control-Allow-Credentials: true` to https://evil.com, https://attacker.com
    and every other .com site named in letters: each reads the user's cookie-authenticated
    answers (Fetch §3.2.5). It is now tried on names of several shapes (letters alone, a
    digit, a hyphen, short and long). Severity: medium (the guard README promises, missed
    for a common spelling of the same catch-all)."""
    path = tmp_path / "cacheproxy.toml"
    path.write_text('[proxy]\nupstream = "http://127.0.0.1:9"\n'
                    f'[cors]\nallow_origins = ["{entry}"]\nallow_credentials = true\n')
    with pytest.raises(ConfigError) as refused:
        load_config(path, env={})
    assert refused.value.key == "cors.allow_origins"
    # One company's own names stay allowed.
    path.write_text('[proxy]\nupstream = "http://127.0.0.1:9"\n[cors]\nallow_origins = '
                    '["~https://[a-z]+\\\\.mycompany\\\\.com"]\nallow_credentials = true\n')
    load_config(path, env={})
