"""Findings of a review of this session's README sections against what the code does
(review-docs4): CORS catch-alls refused with credentials, strip_params in path parameters,
event streams and long polls, Redis's key generations, h2c and HTTP/2's preface. Real
proxy in front of aiohttp origins (or bytes of the test's choosing), all on 127.0.0.1.
The tests of a defect failed on the code they were written against (d2401d0); those that
pin behaviour the README words differently say which sentence to change."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from test_review_h2clients_regressions import behind_h2c
from test_review_policies_regressions import credentialed, refused_with_credentials

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
    assert refused_with_credentials(tmp_path, entry) == "cors.allow_origins"
    credentialed(tmp_path, "~https://[a-z]+\\\\.mycompany\\\\.com")  # (one company's own names)


# -- 2. h2c with a request behind it in the same read ------------------------------------------


async def test_a_request_behind_an_h2c_upgrade_in_one_read_is_answered_too(
        origin: Any, proxy: Any) -> None:
    """README, Errors: an `Upgrade: h2c` request "goes on in HTTP/1.1 on the same
    connection ..., unless another request follows it in the same read: then both are
    answered and the connection closes." Only the first is: the second never reaches the
    origin nor gets an answer; the first says `Connection: close` and the connection
    ends (682131c), so the client must send the second again on a new connection (RFC
    9112 §9.3.1). nginx and Squid answer both (RFC 9112 §9.3.2). Severity: low (no client
    known pipelines behind an h2c upgrade; nothing is answered wrongly, the README
    promises more than is done)."""
    got, seen = await behind_h2c(origin, proxy)
    assert [body for _, _, body in got] == [b"at /one", b"at /two"], got
    assert seen == ["GET /one upgrade=-", "GET /two upgrade=-"]
