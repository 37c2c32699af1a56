"""Instructions the proxy executes per request: a cost that does not move with the load on
the machine, as CPU time does.

    .venv/bin/python bench/instructions.py [--path /pass] [--requests 300] [--rounds 2]
                                           [--other CHECKOUT] [--header 'Name: value' ...]

Runs `cacheproxy serve` (this checkout, and with --other a second one, in turns) under
valgrind's callgrind (`apt-get install valgrind`), in front of origin.py's raw engine,
PYTHONHASHSEED=0. After 200 requests and a second of wrk to warm it, the counters are
zeroed, `--requests` requests go one after the other on 4 keep-alive connections, and the
instructions counted (user space, every thread of the process) are divided by the lines
its request log gained. Rounds of the same build agree within about 1 % (a CPU-time A/B on
the shared 2-vCPU bench VM needs many rounds to see 5 %); compare builds by this, confirm
with an interleaved CPU-time run.

One at a time, the costs of a loop iteration (the gathered sends, the request log's batch)
count once per request, where wrk's 64 connections share them: read the figures as
relative ones. Under valgrind the proxy runs some 50 times slower: a round takes about
30 s.
"""

from __future__ import annotations

import argparse
import http.client
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from harness import PYTHON, RESULTS, ROOT, Child, free_port, running, start, start_origin

WARM = 200
CONNECTIONS = 4


def send(port: int, path: str, n: int, headers: dict[str, str]) -> None:
    conns = [http.client.HTTPConnection("127.0.0.1", port, timeout=120)
             for _ in range(CONNECTIONS)]
    try:
        for i in range(n):
            conn = conns[i % CONNECTIONS]
            conn.request("GET", path, headers=headers)
            resp = conn.getresponse()
            resp.read()
            if resp.status >= 400:
                raise RuntimeError(f"{path}: {resp.status} {resp.reason}")
    finally:
        for conn in conns:
            conn.close()


def lines(log: Path) -> int:
    with log.open("rb") as f:
        return sum(1 for _ in f)


def settle(log: Path) -> int:
    """The request log's line count once it stopped growing (the writer thread is behind)."""
    count = -1
    while (now := lines(log)) != count:
        count = now
        time.sleep(1.0)
    return count


def total_instructions(out: Path) -> int:
    for line in out.read_text(errors="replace").splitlines():
        if line.startswith(("summary:", "totals:")):
            return int(line.split()[1])
    raise RuntimeError(f"no totals in {out}")


def one_round(checkout: Path, origin: Child, path: str, n: int, headers: dict[str, str],
              tag: str) -> float:
    scratch = RESULTS / f"instructions-{tag}"
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True)
    log = scratch / "requests.log"
    port = free_port()
    # -P: the checkout on PYTHONPATH is imported, not the one `-m` would find in the
    # working directory (harness.start's, this one).
    cmd = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={scratch}/callgrind.%p",
           PYTHON, "-P", "-m", "cacheproxy", "serve", "--upstream", origin.url,
           "--listen", f"127.0.0.1:{port}"]
    env = {"PYTHONPATH": str(checkout), "PYTHONHASHSEED": "0", "CACHEPROXY_LOG_PATH": str(log)}
    proxy = start(f"instructions-{tag}", cmd, port, env=env, timeout=300)
    with running(proxy):
        send(port, path, WARM, headers)
        if shutil.which("wrk"):
            subprocess.run(["wrk", "-t1", "-c32", "-d1s", proxy.url + path],
                           capture_output=True, check=False)
        before = settle(log)
        subprocess.run(["callgrind_control", "-z", str(proxy.pid)], capture_output=True,
                       check=True)
        send(port, path, n, headers)
        answered = settle(log) - before
        subprocess.run(["callgrind_control", "-d", str(proxy.pid)], capture_output=True,
                       check=True)
        time.sleep(1.0)
    dumps = sorted(scratch.glob("callgrind.*.*"), key=os.path.getmtime)  # -d's, not the exit's
    if not dumps or answered <= 0:
        raise RuntimeError(f"no dump or no request logged in {scratch}")
    return total_instructions(dumps[-1]) / answered


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--path", default="/pass", help="origin.py route to load")
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--other", type=Path, help="a second checkout, measured in turns")
    parser.add_argument("--header", action="append", default=[],
                        help="a request field, 'Name: value' (repeatable)")
    args = parser.parse_args(argv)
    if not (shutil.which("valgrind") and shutil.which("callgrind_control")):
        print("valgrind is missing (apt-get install valgrind)", file=sys.stderr)
        return 2
    headers = dict(h.split(":", 1) for h in args.header)
    headers = {k.strip(): v.strip() for k, v in headers.items()}
    checkouts = [ROOT, *([args.other.resolve()] if args.other else [])]
    results: dict[Path, list[float]] = {c: [] for c in checkouts}
    origin = start_origin(engine="raw")
    with running(origin):
        for r in range(args.rounds):
            for i, checkout in enumerate(checkouts if r % 2 == 0 else checkouts[::-1]):
                per = one_round(checkout, origin, args.path, args.requests, headers,
                                f"{r}-{i}")
                results[checkout].append(per)
                print(f"{args.path} {checkout}: {per:,.0f} instructions/request",
                      file=sys.stderr)
    medians = {c: statistics.median(v) for c, v in results.items()}
    for checkout, median in medians.items():
        print(f"{args.path} {checkout}: {median:,.0f} instructions/request (median of "
              f"{len(results[checkout])})")
    if args.other:
        print(f"other / this: {medians[checkouts[1]] / medians[ROOT]:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
