"""The dashboard's page key: what tells the dashboard's stats calls from another page's.

On proxy.listen every page the origin serves through the proxy is same-origin with the
dashboard, so "same-origin" does not tell the dashboard's stats calls from a proxied page's
script: the dashboard is given this key only when the user opened it (typed, bookmarked,
reloaded: Sec-Fetch-Site "none"), never to a fetch, frame or window a page opens
("same-origin"), and sends it with its stats calls (observe/admin.py).

A dashboard is left open for hours, across restarts of what it watches (a deploy, systemd
or docker restarting the proxy). A key made at random at each start refused every stats
call of a dashboard opened before the restart, and it stopped polling. With admin.token
set, the key is derived from the token (HMAC-SHA256: the key, which the page holds, does
not give the token away), so every process that has the token, each --workers worker and
the next start, accepts the dashboard's key. Without a token nothing secret outlives the
process: the key is random, made at import, before --workers forks, so that every worker
knows it; a dashboard opened before a restart is told to reload.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from typing import Final

_RANDOM: Final = secrets.token_urlsafe(24)
_LABEL: Final = b"cacheproxy dashboard page key"


def page_key(token: str) -> str:
    """The key the dashboard is given and must send back, for admin.token `token`."""
    if not token:
        return _RANDOM
    digest = hmac.new(token.encode("utf-8", "surrogateescape"), _LABEL, hashlib.sha256)
    return base64.urlsafe_b64encode(digest.digest()).rstrip(b"=").decode()
