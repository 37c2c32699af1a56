"""A third reading of the session's later merges (review-second9, review-container,
review-metrics, review-perfreval, review-logtruth and the lead's test robustness commit),
as a reviewer of an HTTP cache reads them: regressions, two merged changes meeting,
costs added to hits and pass-through, races, and README statements the code no longer
matches.

Read and found right (each tried against the real proxy while reading, kept here where a
guard was missing): the memory store's put_now shortcut for a 304 that changed no field
(CachedResponse.sized_as) with a lowered max_bytes at a reload, with evictions counted per
response, with a sibling's purge between the lookup and the 304 and with a key holding
several Vary variants; replay.py's Date splice with a Date the origin sends twice, with
HEAD, with a 304 to a conditional client and with the stored entry replaced between two
hits; the 408/400 lines of heads cut short with pipelined requests and a half-closed
client; cacheproxy_client_connections back at 0 after every kind of connection closed;
`cacheproxy health` on admin.listen and on a wildcard.
"""

from __future__ import annotations

from pathlib import Path

from processes import clean_env, start_serve, stop

# -- config/env_shadows.py: said once, and only when the environment is what wins --------------


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
