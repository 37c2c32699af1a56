"""The ceiling: a bare aiohttp server answering, from memory, the very bytes the
proxy answers (status, fields and body), with one catch-all route.

    python bench/ceiling.py --fixtures FILE.json --listen 127.0.0.1:0

FILE.json maps a path to {"status": 200, "headers": [[name, value], ...],
"body": "<base64>"}; run.py captures it from the proxy's own answers. Whatever
any aiohttp process does per request (parse, route, build a Response, serialise
the fields, write) this one does too, and nothing else: no access log, uvloop
when installed, just like `cacheproxy serve`. Its requests/s is the most a
single aiohttp process can give for these answers on this machine.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import sys
from pathlib import Path

from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy
from origin import parse_listen, run, serve

# aiohttp computes these itself from the body; replaying them would duplicate them.
_COMPUTED = frozenset({"content-length", "transfer-encoding", "connection", "keep-alive"})

Fixture = tuple[int, CIMultiDictProxy[str], bytes]


def load_fixtures(path: Path) -> dict[str, Fixture]:
    fixtures: dict[str, Fixture] = {}
    for target, spec in json.loads(path.read_text()).items():
        headers = CIMultiDict(
            (k, v) for k, v in spec["headers"] if k.lower() not in _COMPUTED
        )
        fixtures[target] = (int(spec["status"]), CIMultiDictProxy(headers),
                            base64.b64decode(spec["body"]))
    return fixtures


def make_app(fixtures: dict[str, Fixture]) -> web.Application:
    async def answer(request: web.Request) -> web.Response:
        found = fixtures.get(request.raw_path)
        if found is None:
            raise web.HTTPNotFound()
        status, headers, body = found
        # A fresh Response per request, as every aiohttp handler makes one.
        return web.Response(status=status, headers=headers, body=body)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", answer)
    return app


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fixtures", required=True, type=Path, help="JSON written by run.py")
    parser.add_argument("--listen", default="127.0.0.1:0", help="HOST:PORT (port 0: any free)")
    args = parser.parse_args(argv)
    host, port = parse_listen(args.listen)
    app = make_app(load_fixtures(args.fixtures))
    with contextlib.suppress(KeyboardInterrupt):
        run(lambda: serve(host, port, app))
    return 0


if __name__ == "__main__":
    sys.exit(main())
