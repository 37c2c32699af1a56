"""A third reading of the session's later merges (review-second9, review-container,
review-metrics, review-perfreval, review-logtruth and the lead's test robustness commit),
as a reviewer of an HTTP cache reads them: regressions, two merged changes meeting,
costs added to hits and pass-through, races, and README statements the code no longer
matches.

Found and fixed here: an environment override warned N + 1 times per reload with
--workers, and warned of a key a flag sets; a variant dropped at the 32-variant bound was
no eviction (349b34f's entries + evictions did not add up).

Run against the real proxy and found right: replay.py's Date splice with Vary variants,
HEAD, a 304 to a conditional client and a Date sent twice (the guard below); the 408/400
lines of heads cut short with pipelined requests, a half-closed client, an empty line
after a request and refusals at proxy.max_client_connections (no line for those);
cacheproxy_client_connections back at 0 after CONNECT tunnels, WebSockets, 431s, 400s,
bodies cut, header timeouts and refusals; `cacheproxy health` with admin.listen on [::]
and proxy.listen on 0.0.0.0; collapsed waiters' bytes counted from the cache (HIT).
Read and found right: the memory store's put_now shortcut (CachedResponse.sized_as
compares every input of CachedResponse.size; a held response fits max_bytes after a
resize too; a key holding several variants takes the full path; a sibling's purge
between lookup and 304 leaves nothing for freshened_still_held to put back).
"""

from __future__ import annotations

import asyncio
import signal
from email.utils import formatdate
from pathlib import Path
from typing import Any

from aiohttp import web
from processes import clean_env, start_serve, stop
from prometheus_client.parser import text_string_to_metric_families
from support import raw_origin

# -- config/env_shadows.py: said once, and only when the environment is what wins --------------


async def _lines_until(proc: asyncio.subprocess.Process, needle: str, count: int,
                       seconds: float = 10) -> str:
    """What proc wrote to stderr until `needle` was in `count` lines (or seconds passed)."""
    seen: list[str] = []
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    assert proc.stderr is not None
    while sum(needle in line for line in seen) < count and loop.time() < deadline:
        try:
            line = await asyncio.wait_for(proc.stderr.readline(), deadline - loop.time())
        except TimeoutError:
            break
        if not line:
            break
        seen.append(line.decode(errors="replace"))
    return "".join(seen)


async def test_an_environment_override_is_said_once_per_reload_with_workers(
        tmp_path: Path) -> None:
    """What was wrong: with --workers N, a SIGHUP reload said each key the environment
    overrides N + 1 times: once by the parent, which loads the file to check it before
    signalling the workers (workers.Supervisor._reload), then once by every worker, each
    of which reloads with the same closure. The supervisor's own docstring refuses N + 1
    lines for one mistake in the file (a refused reload is said once, by the parent);
    a warning is no different. What a user saw: 5 identical warnings per reload with
    --workers 4, in a log where each line reads as a new event (nginx's master says a
    configuration problem once, not per worker). Now the process that read the flags
    (the parent with --workers, the one process without) says it; workers reload quietly.
    Severity: low (noise in the operator's log)."""
    conf = tmp_path / "cacheproxy.toml"
    conf.write_text('[proxy]\nvia = "edge-1"\n')
    env = clean_env(CACHEPROXY_PROXY_VIA="proxy-a")
    proc, _ = await start_serve("--config", str(conf), "--upstream", "http://127.0.0.1:9",
                                "--workers", "2", "--log-file", str(tmp_path / "r.log"),
                                cwd=tmp_path, env=env)
    try:
        started = await _lines_until(proc, "listening on", 2)
        proc.send_signal(signal.SIGHUP)
        reloaded = await _lines_until(proc, "configuration reloaded", 2)
        code, rest = await stop(proc)
    finally:
        if proc.returncode is None:
            proc.kill()
    said = "CACHEPROXY_PROXY_VIA in the environment overrides proxy.via"
    assert started.count(said) == 1, started
    assert reloaded.count("configuration reloaded") == 2, reloaded  # (both workers did)
    assert (reloaded + rest).count(said) == 1, reloaded + rest
    assert code == 0, rest


async def test_a_key_a_flag_sets_is_not_said_to_be_the_environments(tmp_path: Path) -> None:
    """What was wrong: `serve --listen A` with CACHEPROXY_PROXY_LISTEN=B in the environment
    (the image's ENV sets it) and listen = C in the file warned "CACHEPROXY_PROXY_LISTEN in
    the environment overrides proxy.listen ... (the environment wins over the file)",
    though the flag wins over both (README, Configuration: flags, then the environment,
    then the file) and the server listened on A. What a user saw: a warning pointing at
    the wrong source; removing the variable it named changed nothing. A key a flag sets
    is no longer said. Severity: low (a misleading warning)."""
    conf = tmp_path / "cacheproxy.toml"
    conf.write_text('[proxy]\nlisten = "127.0.0.1:9000"\nvia = "edge-1"\n')
    env = clean_env(CACHEPROXY_PROXY_LISTEN="127.0.0.1:9001", CACHEPROXY_PROXY_VIA="proxy-a")
    proc, port = await start_serve("--config", str(conf), "--upstream", "http://127.0.0.1:9",
                                   "--log-file", str(tmp_path / "r.log"), cwd=tmp_path, env=env)
    code, err = await stop(proc)
    assert f"listening on http://127.0.0.1:{port}" in err  # the flag's address
    assert "CACHEPROXY_PROXY_LISTEN" not in err, err
    assert "CACHEPROXY_PROXY_VIA in the environment overrides proxy.via" in err  # (still said)
    assert code == 0, err


# -- replay.py's Date splice and the store's same-tuples refresh, where they meet ---------------


async def test_a_new_date_per_304_is_replayed_right_for_each_variant_head_and_304(
        proxy: Any) -> None:
    """A guard, not a fix (it passes before and after): the Date splice (replay.py, a 304
    with a Date of its own rewrites the Date line of the last head made for the URL) and
    the memory store's same-tuples refresh (MemoryStore.put_now, CachedResponse.sized_as)
    meet Vary variants of one URL that differ in Content-Encoding but not in length, an
    origin that sends Date twice, HEAD, and a 304 to a conditional client, on URLs that
    revalidate on every request (max-age=0), each 304 with a new Date. Each answer must
    carry its own variant's fields and body and the Date of the origin's last answer
    (RFC 9111 §4.3.4: the stored response is updated with the 304's fields; §4.1: the
    variant the request selects). What a user would see if the splice crossed variants or
    kept a Date: a gzip body labelled br, or a Date going back in time. Severity of such
    a regression: high (a body a client cannot decode)."""
    last_date: dict[str, str] = {}
    count = [0]

    def answer(head: bytes) -> bytes:
        count[0] += 1
        text = head.decode("latin-1")
        method, path = text.split(" ", 2)[:2]
        fields = {line.partition(":")[0].strip().lower(): line.partition(":")[2].strip()
                  for line in text.split("\r\n")[1:] if line}
        gzip = "gzip" in fields.get("accept-encoding", "")
        date = formatdate(1_800_000_000 + count[0], usegmt=True)
        last_date[path] = date
        dates = f"Date: {date}\r\n" * (2 if path == "/twice" else 1)
        tag = '"g"' if gzip else '"b"'
        common = f"{dates}ETag: {tag}\r\nCache-Control: max-age=0\r\n"
        if fields.get("if-none-match") == tag:
            return f"HTTP/1.1 304 Not Modified\r\n{common}\r\n".encode()
        body = b"GGGG" if gzip else b"BBBB"
        return (f"HTTP/1.1 200 OK\r\n{common}Vary: Accept-Encoding\r\nContent-Encoding: "
                f"{'gzip' if gzip else 'br'}\r\nContent-Length: 4\r\n\r\n").encode() \
            + (b"" if method == "HEAD" else body)

    async with raw_origin(answer) as port:
        c = await proxy(f"http://127.0.0.1:{port}")  # (a keep-alive client: the quick path)
        # One variant held, then two (the same length, another Content-Encoding).
        for codings in (("gzip",), ("gzip", "br")):
            for _ in range(3):
                for coding in codings:
                    for path in ("/v", "/twice"):
                        await _asked(c, path, coding, last_date)


async def _asked(c: Any, path: str, coding: str, last_date: dict[str, str]) -> None:
    """GET, GET, HEAD, GET and a conditional GET of path's variant for coding, each
    answered with that variant's fields and body and the Date of the origin's last
    answer (each of them revalidates)."""
    body, tag = (b"GGGG", '"g"') if coding == "gzip" else (b"BBBB", '"b"')
    for method in ("GET", "GET", "HEAD", "GET"):
        resp = await c.request(method, path, headers={"Accept-Encoding": coding})
        assert resp.status == 200
        assert resp.headers.getall("Content-Encoding") == [coding]
        assert await resp.read() == (body if method == "GET" else b"")
        assert set(resp.headers.getall("Date")) == {last_date[path]}, (path, coding, method)
    resp = await c.get(path, headers={"Accept-Encoding": coding, "If-None-Match": tag})
    assert (resp.status, await resp.read()) == (304, b"")
    assert resp.headers.getall("ETag") == [tag]
    assert set(resp.headers.getall("Date")) == {last_date[path]}, (path, coding, "304")


# -- store/memory.py: evictions count responses (349b34f), the variant bound's too -------------


async def test_a_variant_dropped_at_the_variant_bound_counts_as_an_eviction(
        origin: Any, proxy: Any) -> None:
    """What was wrong: 349b34f made cacheproxy_store_evictions_total count the responses
    removed, so that stored = entries + evicted adds up (README: "each Vary variant
    counted as cacheproxy_store_entries counts it"), and counted a key's own older
    variants dropped to fit max_bytes; but the oldest variant dropped when a URL passes
    its 32 variants (store/memory.py MAX_VARIANTS: Vary: User-Agent, Accept-Language)
    left entries and was counted nowhere. What a user saw: on a site varying on
    User-Agent, entries + evictions fell short of the responses stored, by one per
    request past the 32nd client kind, with the store far from full: a loss the metrics
    did not show. Now such a variant counts as an eviction (Varnish's n_lru_nuked counts
    each object removed to make room). Severity: low (a metric that does not add up)."""
    async def page(request: web.Request) -> web.Response:
        return web.Response(text="v" + request.headers.get("User-Agent", ""),
                            headers={"Cache-Control": "max-age=600", "Vary": "User-Agent"})

    app = web.Application()
    app.router.add_get("/{tail:.*}", page)
    c = await proxy(await origin(app))  # (the default max_bytes: room for all of them)
    kinds = 35
    for i in range(kinds):
        resp = await c.get("/varied", headers={"User-Agent": f"agent-{i}"})
        assert resp.status == 200 and await resp.read() == f"vagent-{i}".encode()
    text = await (await c.get("/metrics")).text()
    samples = {s.name: s.value for f in text_string_to_metric_families(text) for s in f.samples}
    entries = samples["cacheproxy_store_entries"]
    evictions = samples["cacheproxy_store_evictions_total"]
    assert entries == 32  # (the bound: the 3 oldest agents' variants went)
    assert entries + evictions == kinds, (entries, evictions)
