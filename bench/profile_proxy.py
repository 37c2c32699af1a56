"""Where the proxy's time goes on one scenario, per request.

    .venv/bin/python bench/profile_proxy.py [--path /hit1k] [--seconds 6] [--tool TOOL]

Starts the origin and the proxy (pinned like run.py), primes the path, loads
it with wrk (or loadgen.py), and samples the proxy while it serves:

- py-spy (`.venv/bin/pip install py-spy`): samples the running process at
  1 kHz without stopping it; costs are "µs of CPU per request" = samples /
  rate / requests, inclusive (the function and what it calls) and self.
- cProfile (always there, --tool cprofile): the proxy runs under it; exact call counts per
  request, but every Python call is slowed, so read its times as relative.
"""

from __future__ import annotations

import argparse
import collections
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

from harness import (
    BENCH,
    PYTHON,
    RESULTS,
    Cpus,
    cacheproxy_command,
    free_port,
    get,
    pinned,
    running,
    start,
    start_origin,
)

RATE = 1000  # py-spy samples per second
_LINE = re.compile(r":\d+\)$")


def serve_under_cprofile(out: str, argv: list[str]) -> int:
    """Hidden mode: run `cacheproxy` under cProfile; the stats are written when it
    stops (`cacheproxy serve` ends cleanly on SIGTERM)."""
    import cProfile

    from cacheproxy.cli import main

    prof = cProfile.Profile()
    prof.enable()
    try:
        return main(argv)
    finally:
        prof.disable()
        prof.dump_stats(out)


def load_command(tool: str, url: str, seconds: int, cpu: int | None) -> list[str]:
    if tool == "wrk":
        cmd = ["wrk", "-t", "1", "-c", "64", "-d", f"{seconds}s", "-s",
               str(BENCH / "report.lua"), url]
    else:
        cmd = [PYTHON, str(BENCH / "loadgen.py"), url, "--duration", str(seconds)]
    return pinned(cmd, cpu)


def requests_of(stdout: str) -> tuple[int, float]:
    line = next(ln for ln in stdout.splitlines() if ln.startswith("WRK_JSON "))
    d = json.loads(line[len("WRK_JSON "):])
    return d["requests"], d["duration_us"] / 1e6


def report_pyspy(folded: Path, requests: float, top: int) -> None:
    inclusive: collections.Counter[str] = collections.Counter()
    own: collections.Counter[str] = collections.Counter()
    total = 0
    for line in folded.read_text(errors="replace").splitlines():
        stack, _, n = line.rpartition(" ")
        if not n.isdigit():  # py-spy now and then samples a torn frame name with a newline
            continue
        frames = [_LINE.sub(")", f) for f in stack.split(";")]  # per function, not line
        total += int(n)
        own[frames[-1]] += int(n)
        for f in set(frames):
            inclusive[f] += int(n)

    def us(n: int) -> float:
        return n / RATE / requests * 1e6

    print(f"busy CPU per request: {us(total):.1f} µs (py-spy, {total} samples)")
    print("\ninclusive µs/request (cacheproxy's functions, and aiohttp's above 1 µs):")
    for f, n in inclusive.most_common():
        if us(n) < 0.2 or not ("cacheproxy/" in f or ("aiohttp/" in f and us(n) >= 1.0)):
            continue
        if not any(skip in f for skip in ("cli.py", "server.py", "<module>")):
            print(f"  {us(n):6.1f}  {f}")
    print(f"\nself µs/request, top {top}:")
    for f, n in own.most_common(top):
        print(f"  {us(n):6.1f}  {f}")


def report_cprofile(stats_file: Path, requests: int, top: int) -> None:
    import pstats

    stats = pstats.Stats(str(stats_file)).stats  # type: ignore[attr-defined]
    rows = sorted(stats.items(), key=lambda kv: -kv[1][3])
    calls = sum(v[1] for v in stats.values())
    print(f"{calls / requests:.0f} Python function calls per request (cProfile; times inflated)")
    print("\ncacheproxy functions: calls/request, own µs, cumulative µs:")
    for (file, line, name), (_, ncalls, tottime, cumtime, _) in rows:
        if "cacheproxy/" in file and ncalls >= requests // 2:
            short = file.split("cacheproxy/", 1)[1]
            print(f"  {ncalls / requests:5.2f}  {tottime / requests * 1e6:6.2f}  "
                  f"{cumtime / requests * 1e6:6.2f}  {short}:{line} {name}")
    print(f"\ntop {top} by own time, µs/request:")
    for (file, line, name), (_, ncalls, tottime, _, _) in sorted(
            stats.items(), key=lambda kv: -kv[1][2])[:top]:
        print(f"  {tottime / requests * 1e6:6.2f}  {Path(file).name}:{line} {name} "
              f"({ncalls / requests:.2f} calls)")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--serve-under-cprofile"]:
        return serve_under_cprofile(argv[1], argv[2:])
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--path", default="/hit1k", help="origin.py route to load")
    parser.add_argument("--seconds", type=int, default=6)
    parser.add_argument("--tool", choices=("auto", "py-spy", "cprofile"), default="auto")
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args(argv)
    pyspy = shutil.which("py-spy") or str(Path(PYTHON).parent / "py-spy")
    tool = args.tool
    if tool == "auto":
        tool = "py-spy" if Path(pyspy).exists() else "cprofile"
    loader = "wrk" if shutil.which("wrk") else "python"
    cpus = Cpus.plan()
    RESULTS.mkdir(exist_ok=True)
    stats_file = RESULTS / "profile.prof"  # and profile.folded for py-spy

    origin = start_origin(cpus.origin)
    port = free_port()
    serve = ["serve", "--upstream", origin.url, "--listen", f"127.0.0.1:{port}"]
    if tool == "cprofile":
        cmd = [PYTHON, str(Path(__file__).resolve()), "--serve-under-cprofile",
               str(stats_file), *serve]
    else:
        cmd = [*cacheproxy_command(), *serve]
    proxy = start("proxy-profile", cmd, port, cpu=cpus.server)
    with running(origin, proxy):
        for _ in range(2):
            first = get(proxy.port, args.path)
        print(f"{args.path}: X-Cache {first.header('X-Cache')}, "
              f"Cache-Status {first.header('Cache-Status')!r}; {tool}, load by {loader}")
        url = proxy.url + args.path
        if tool == "py-spy":
            folded = stats_file.with_suffix(".folded")
            load = subprocess.Popen(load_command(loader, url, args.seconds + 2, cpus.client),
                                    stdout=subprocess.PIPE, text=True)
            spy = subprocess.run(
                [pyspy, "record", "-p", str(proxy.pid), "-d", str(args.seconds), "-r",
                 str(RATE), "-f", "raw", "-o", str(folded), "--nonblocking"],
                capture_output=True, text=True, check=False)
            out, _ = load.communicate(timeout=args.seconds + 60)
            if spy.returncode != 0:
                print(spy.stderr, file=sys.stderr)
                return 1
            n, secs = requests_of(out)
            print(f"{n / secs:,.0f} req/s while sampled")
            report_pyspy(folded, n / secs * args.seconds, args.top)
        else:
            out = subprocess.run(load_command(loader, url, args.seconds, cpus.client),
                                 capture_output=True, text=True, check=True).stdout
            n, secs = requests_of(out)
            print(f"{n / secs:,.0f} req/s under cProfile")
            proxy.stop()  # SIGTERM: the wrapper writes the stats
            report_cprofile(stats_file, n, args.top)
    return 0


if __name__ == "__main__":
    sys.exit(main())
