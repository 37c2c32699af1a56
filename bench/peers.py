"""cacheproxy side by side with nginx, Squid, bare aiohttp and the lean probe, in one run.

    .venv/bin/python bench/peers.py [--quick]
                                    [--only nginx,squid,aiohttp,lean,cacheproxy,workers2,nginx2]
                                    [--duration 4] [--rounds 3] [--extra-rounds 1] [--warmup 2]
                                    [--distinct-heads] [--pipeline 32] [--scenarios hit-1k]

The table of issue 10 ("A lean data plane"), measured here: rows are the servers, columns
the scenarios of run.py (hit 1 KiB, hit 32 KiB, revalidation, pass-through) and the p99
latency of hits; then the ratios that the issue's targets name. All servers stand in front
of the same bench/origin.py, each started as a child process on a free loopback port
(peer_servers.py), the ones under test pinned to the same CPU, wrk (-t1 -c64) and the
origin on the other. For each scenario the targets take turns, round after round
(interleaved, so that drift on a shared machine hits all of them alike), and the best round
of each counts.

Before a target is measured it is checked to do what its cell claims: its answer has the
origin's body, and the origin's /__stats counters move as the role says (a hit: not at all;
a revalidation: one 304, never a 200; a pass-through: one 200 per request). The same check
runs on the counters over every measured round. Any error status under load fails the cell.

cacheproxy runs as `cacheproxy serve` with the default config (JSON request log on, into
bench/results/cacheproxy.log), whatever serves the data plane: the harness talks HTTP only.
Results go to bench/results/peers-<time>.json and peers-latest.json.

wrk sends the same request head again and again, as a poller or a client reloading a page
does; with --distinct-heads every request carries its own X-Request-Id (as behind a load
balancer that adds one, report.lua), so that no server gains from having seen the same
bytes before.

With --pipeline N every write of wrk's carries N requests (HTTP/1.1 pipelining, report.lua):
wrk then spends a fraction of the CPU per answer. That is how the `--workers 2` target is
measured on a 2-CPU machine, where the pair shares both CPUs with wrk: without it wrk takes
most of a CPU, and no server's second process gets one (README, "Two workers").
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import peer_servers
from harness import (
    RESULTS,
    ROOT,
    Child,
    Cpus,
    cpu_seconds,
    get,
    get_json,
    machine_cpu_seconds,
    running,
    start_ceiling,
    start_origin,
    start_proxy,
)
from peers_report import (
    FORWARD,
    HIT,
    NONE,
    PASS,
    QUIET,
    REVAL,
    ROLE_NOTE,
    ROWS,
    neighbours,
    ratio_table,
    ratios,
    table,
)
from run import SCENARIOS, CheckFailed, Load, Scenario, best, check_answer, environment, measure


@dataclass(frozen=True)
class Cell:
    row: str
    scenario: Scenario
    child: Child
    role: str


# -- checks ----------------------------------------------------------------------------


def origin_counts(origin: Child, path: str) -> tuple[int, int]:
    stats = get_json(origin.port, "/__stats")
    return stats.get(f"{path} 200", 0), stats.get(f"{path} 304", 0)


def settled_counts(origin: Child, path: str, timeout: float = 3.0) -> tuple[int, int]:
    """The counters once they stop moving: requests still in flight when wrk stopped
    (up to 64) reach the origin late, and must count for the server that sent them."""
    last, deadline = origin_counts(origin, path), time.monotonic() + timeout
    while time.monotonic() < deadline:
        time.sleep(0.1)
        now = origin_counts(origin, path)
        if now == last:
            break
        last = now
    return last


def check_role(cell: Cell, n200: int, n304: int, requests: int) -> str:
    """Raises unless the origin saw what the cell's role says; returns it as one line."""
    name = f"{cell.row} {cell.scenario.name}"
    if cell.role == HIT and n200 + n304:
        raise CheckFailed(f"{name}: {n200 + n304} requests reached the origin during hits")
    if cell.role == REVAL and (n200 or not n304):
        raise CheckFailed(f"{name}: origin sent {n304} x 304, {n200} x 200 "
                          f"for {requests} answers")
    if cell.role in (PASS, FORWARD) and (n304 or n200 < requests):
        raise CheckFailed(f"{name}: origin answered {n200} x 200, {n304} x 304 "
                          f"for {requests} requests")
    return f"origin: {n200} x 200, {n304} x 304 for {requests} answers"


def prime(cell: Cell, origin: Child, reference: dict[str, bytes]) -> None:
    """Store what a hit needs, then check one more answer against the role."""
    path = cell.scenario.path
    # A fresh connection each: with --workers 2 the kernel spreads them over both.
    for _ in range(16 if cell.row in ("workers2", "nginx2") else 1):
        get(cell.child.port, path)
    before = origin_counts(origin, path)
    answer = get(cell.child.port, path)
    after = origin_counts(origin, path)
    if answer.status != 200 or answer.body != reference[path]:
        raise CheckFailed(f"{cell.row} {cell.scenario.name}: status {answer.status}, "
                          f"{len(answer.body)} bytes: not the origin's answer")
    if cell.role != NONE:
        check_role(cell, after[0] - before[0], after[1] - before[1], 1)
    if cell.row == "cacheproxy":  # its own account of the same, as run.py checks it
        check_answer(cell.scenario, answer)


# -- the run ---------------------------------------------------------------------------


def plan(children: dict[str, Child], only: set[str]) -> list[Cell]:
    """Which target answers which scenario, in what role."""
    roles = {
        "nginx": {"hit-1k": HIT, "hit-32k": HIT, "reval": FORWARD, "pass": PASS},
        "squid": {"hit-1k": HIT, "hit-32k": HIT, "reval": REVAL, "pass": PASS},
        "aiohttp": {"hit-1k": NONE, "hit-32k": NONE},
        "lean": {"hit-1k": HIT, "hit-32k": HIT, "pass": PASS},
        "cacheproxy": {"hit-1k": HIT, "hit-32k": HIT, "reval": REVAL, "pass": PASS},
        "workers2": {"hit-1k": HIT},
        "nginx2": {"hit-1k": HIT},
    }
    child_key = {"lean": {"hit-1k": "lean-hit", "hit-32k": "lean-hit", "pass": "lean-pass"}}
    cells = []
    for s in SCENARIOS:
        for row in ROWS:
            role = roles[row.key].get(s.name)
            if row.key in only and role is not None:
                key = child_key.get(row.key, {}).get(s.name, row.key)
                cells.append(Cell(row.key, s, children[key], role))
    return cells


def one_round(cell: Cell, origin: Child, load: Load, warm: bool) -> dict:
    """One measured round of one cell, checked against its role; raises if wrong."""
    path = cell.scenario.path
    if warm and load.warmup:
        load.run(cell.child.url + path, load.warmup)
    before = settled_counts(origin, path)
    origin_cpu, all_cpu = cpu_seconds(origin.pid), machine_cpu_seconds()
    m = measure(load, cell.child, path, warm=False)
    seconds = m["duration_us"] / 1e6
    m["origin_busy"] = (cpu_seconds(origin.pid) - origin_cpu) / seconds
    # CPUs' worth of work by anything but the server, wrk and the origin.
    m["others_busy"] = max(0.0, (machine_cpu_seconds() - all_cpu) / seconds
                           - m["cpu_busy"] - m["client_busy"] - m["origin_busy"])
    after = settled_counts(origin, path)
    n200, n304 = after[0] - before[0], after[1] - before[1]
    note = check_role(cell, n200, n304, m["requests"]) if cell.role != NONE \
        else ROLE_NOTE[NONE]
    return {**m, "origin_200": n200, "origin_304": n304, "check": note}


def run_cells(cells: list[Cell], origin: Child, load: Load, rounds: int,
              extra: int = 0) -> dict:
    """Per scenario, every target in turn, `rounds` times; then up to `extra` more rounds
    for the targets whose best round so far had busy neighbours. The best round counts."""
    return {s.name: run_scenario([c for c in cells if c.scenario == s], origin, load,
                                 rounds, extra) for s in SCENARIOS}


def run_scenario(these: list[Cell], origin: Child, load: Load, rounds: int,
                 extra: int) -> dict[str, dict]:
    done: dict[str, list[dict]] = {c.row: [] for c in these}
    failed: dict[str, str] = {}

    def turn(cell: Cell, r: int) -> None:
        if cell.row in failed:
            return
        name = f"{cell.scenario.name} round {r + 1} {cell.row}"
        try:
            m = one_round(cell, origin, load, warm=r == 0)
        except (CheckFailed, RuntimeError) as exc:
            failed[cell.row] = str(exc)
            print(f"  {name}: FAILED: {exc}", file=sys.stderr)
            return
        done[cell.row].append(m)
        print(f"  {name}: {m['rps']:,.0f} req/s, p99 {m['latency_us']['p99'] / 1000:.2f} ms, "
              f"{m['cpu_us_per_req']:.0f} CPU us/req, wrk {m['client_busy']:.2f} CPU, others busy "
              f"{m['others_busy']:.2f} CPU ({m['check']})", file=sys.stderr)

    for r in range(rounds):
        # Rotate the order each round so that no target is always first after a change.
        k = r % max(1, len(these))
        for cell in these[k:] + these[:k]:
            turn(cell, r)
    for r in range(rounds, rounds + extra):
        for cell in these:
            if done[cell.row] and noisy(max(done[cell.row], key=lambda m: m["rps"])):
                turn(cell, r)
    return {c.row: summarize(c, done[c.row], failed.get(c.row)) for c in these}


def noisy(m: dict) -> bool:
    return m["others_busy"] >= QUIET


def summarize(cell: Cell, rounds: list[dict], error: str | None) -> dict:
    if error is not None or not rounds:
        return {"role": cell.role, "error": error or "no round measured"}
    top = best(rounds)
    return {
        "role": cell.role, "rps": top["rps"], "latency_us": top["latency_us"],
        # Like req/s, latency only suffers from noise: the least p99 of the rounds.
        "p99_us": min(m["latency_us"]["p99"] for m in rounds),
        "p50_us": min(m["latency_us"]["p50"] for m in rounds),
        "rounds_p99_us": [m["latency_us"]["p99"] for m in rounds],
        "cpu_us_per_req": top["min_cpu_us_per_req"],
        "rounds_rps": top["rounds_rps"], "rounds_cpu_us": top["rounds_cpu_us"],
        # CPU shares, in the best round, of wrk, the origin (on their own CPU) and of
        # every other process on the machine (in CPUs).
        "client_busy": round(top["client_busy"], 2),
        "origin_busy": round(top["origin_busy"], 2),
        "others_busy_best": round(top["others_busy"], 2),
        "others_busy": [round(m["others_busy"], 2) for m in rounds],
        "origin_per_answer": [
            round((m["origin_200"] + m["origin_304"]) / max(1, m["requests"]), 3)
            for m in rounds],
        "checks": [m["check"] for m in rounds]}


# -- main ------------------------------------------------------------------------------


def start_all(origin: Child, cpus: Cpus, only: set[str], scratch: Path,
              stack: list[Child]) -> dict[str, Child]:
    """Start every selected target (cacheproxy always: its answers feed the ceiling)."""
    children: dict[str, Child] = {}

    def add(key: str, child: Child) -> None:
        children[key] = child
        stack.append(child)

    add("cacheproxy", start_proxy(origin.url, cpu=cpus.server, name="cacheproxy"))
    if "aiohttp" in only:
        add("aiohttp", ceiling_from(children["cacheproxy"], cpus))
    if "nginx" in only:
        add("nginx", peer_servers.start_nginx(origin, cpus.server, scratch))
    if "squid" in only:
        add("squid", peer_servers.start_squid(origin, cpus.server, scratch))
    if "lean" in only:
        add("lean-hit", peer_servers.start_lean_probe(origin, "hit", cpus.server))
        add("lean-pass", peer_servers.start_lean_probe(origin, "pass", cpus.server))
    if "workers2" in only:
        add("workers2", start_proxy(origin.url, name="cacheproxy-workers2", workers=2))
        time.sleep(1.0)  # both workers listening
    if "nginx2" in only:
        add("nginx2", peer_servers.start_nginx(origin, None, scratch, workers=2))
    return children


def ceiling_from(proxy: Child, cpus: Cpus) -> Child:
    """ceiling.py answering, from memory, the bytes cacheproxy answers for the hits."""
    fixtures = {}
    for s in SCENARIOS:
        if s.kind == "hit":
            get(proxy.port, s.path)
            a = get(proxy.port, s.path)
            fixtures[s.path] = {"status": a.status, "headers": a.headers,
                                "body": base64.b64encode(a.body).decode()}
    path = RESULTS / "peers-ceiling-fixtures.json"
    RESULTS.mkdir(exist_ok=True)
    path.write_text(json.dumps(fixtures, indent=1))
    return start_ceiling(path, cpus.server)


def main(argv: list[str] | None = None) -> int:
    keys = [r.key for r in ROWS]
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=int, default=4, help="seconds per measured round")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds per scenario")
    parser.add_argument("--extra-rounds", type=int, default=1,
                        help=f"more rounds for targets whose best round so far ran beside "
                             f"other processes using >= {QUIET} CPU")
    parser.add_argument("--warmup", type=int, default=2,
                        help="seconds of load before a target's first round")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--quick", action="store_true", help="2 rounds of 2 s (+1 s warm-up)")
    parser.add_argument("--only", default=",".join(keys),
                        help=f"comma-separated rows among {','.join(keys)}")
    parser.add_argument("--no-pin", action="store_true", help="do not pin processes to CPUs")
    parser.add_argument("--distinct-heads", action="store_true",
                        help="a distinct X-Request-Id on every request (report.lua)")
    parser.add_argument("--pipeline", type=int, default=1, metavar="N",
                        help="requests per write of wrk's (HTTP/1.1 pipelining; report.lua)")
    parser.add_argument("--scenarios", default=",".join(s.name for s in SCENARIOS),
                        help="comma-separated scenarios among "
                             f"{','.join(s.name for s in SCENARIOS)}")
    args = parser.parse_args(argv)
    if not 1 <= args.pipeline <= 256:
        parser.error("--pipeline takes 1 to 256 requests per write")
    os.environ["WRK_PIPELINE"] = str(args.pipeline)  # read by report.lua
    names = {s.name for s in SCENARIOS}
    chosen = {k.strip() for k in args.scenarios.split(",") if k.strip()}
    if not chosen or chosen - names:
        parser.error(f"unknown scenarios {sorted(chosen - names)}; choose among {sorted(names)}")
    if args.distinct_heads:  # read by report.lua, in every wrk this run starts
        os.environ["WRK_DISTINCT_HEADS"] = "1"
    if args.quick:
        args.duration, args.warmup, args.rounds, args.extra_rounds = 2, 1, 2, 0
    only = {k.strip() for k in args.only.split(",") if k.strip()}
    if only - set(keys):
        parser.error(f"unknown rows {sorted(only - set(keys))}; choose among {keys}")
    needs = {"wrk", *only, *(("nginx",) if "nginx2" in only else ())}
    problems = [f"Debian package {p} (apt-get install -y {p})"
                for p in peer_servers.missing_tools() if p in needs]
    if "lean" in only and (missing := peer_servers.lean_probe_missing()):
        problems.append(missing)
    if problems:
        print("missing: " + "; ".join(problems), file=sys.stderr)
        return 2

    cpus = Cpus.plan(not args.no_pin)
    load = Load("wrk", args.duration, args.warmup, args.connections, 1, cpus.client)
    rows = [r for r in ROWS if r.key in only]
    started = time.monotonic()
    print(f"wrk -t1 -c{args.connections}, {args.pipeline} request(s) per write, "
          f"{args.rounds} round(s) of {args.duration} s per target and scenario "
          f"(+{args.warmup} s warm-up); {cpus.describe()}", file=sys.stderr)
    stack: list[Child] = []
    origin = start_origin(cpus.origin, engine="raw")
    with peer_servers.scratch() as scratch, running(origin):
        try:  # stops whatever started, even when a later start fails
            children = start_all(origin, cpus, only, scratch, stack)
            reference = {s.path: get(origin.port, s.path).body for s in SCENARIOS}
            cells = [c for c in plan(children, only) if c.scenario.name in chosen]
            for cell in cells:
                prime(cell, origin, reference)
            results = run_cells(cells, origin, load, args.rounds, args.extra_rounds)
        finally:
            for child in reversed(stack):
                child.stop()

    rs = ratios(results, latency=args.pipeline == 1)
    print()
    print(table(results, rows))
    if args.pipeline > 1:
        print(f"\n(--pipeline {args.pipeline}: wrk times a batch of requests, so the p99 "
              "columns are no answer's latency, and no latency ratio is given.)")
    print()
    print(ratio_table(rs))
    print()
    print(neighbours(results))
    env = {**environment(load, cpus), **peer_servers.versions(), "rounds": args.rounds,
           "extra_rounds": args.extra_rounds, "distinct_heads": args.distinct_heads,
           "pipeline": args.pipeline, "scenarios": sorted(chosen)}
    report = {"environment": env, "rows": [asdict(r) for r in rows], "results": results,
              "ratios": rs, "seconds": round(time.monotonic() - started, 1),
              "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())}
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for name in (f"peers-{stamp}.json", "peers-latest.json"):
        (RESULTS / name).write_text(json.dumps(report, indent=2))
    print(f"\n({report['seconds']:.0f} s; results in "
          f"{RESULTS.relative_to(ROOT)}/peers-{stamp}.json)")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except CheckFailed as exc:
        print(f"check failed: {exc}", file=sys.stderr)
        sys.exit(1)
    except RuntimeError as exc:  # a server that would not start, or died
        print(f"failed: {exc}", file=sys.stderr)
        sys.exit(1)
