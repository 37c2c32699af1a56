"""Memory and speed of `cacheproxy logs` on a large log: proof that it streams.

    .venv/bin/python bench/logs_memory.py [--size-mb 1024] [--urls 2000000] [--keep DIR]

Writes a synthetic request log of --size-mb into a temporary directory under /tmp (deleted
at the end unless --keep): JSON Lines and text-format lines mixed in blocks, as after a
format change, with --urls distinct URLs requested with Zipf-like (1/rank) popularity,
popular URLs mostly hits and the long tail mostly misses, and about one line in a thousand
malformed (garbage, truncated JSON, binary, empty). Then runs `cacheproxy logs FILE --json`
as a child process, first on a 1 KiB log (the interpreter and imports alone), then on a
JSON-only and a text-only log of --per-format-mb each (the two parsers' speeds), then on
the big one, and reports each child's peak RSS and throughput.

Peak RSS is the child's VmHWM (/proc/PID/status: the kernel's high-water mark of its
resident set), read every 10 ms until it exits; VmHWM only rises, so the last reading
misses at most the final 10 ms. Not ru_maxrss from wait4: Linux carries the parent's
high-water mark into a child across fork + exec, so it would report this script's size.

The lines are written with f-strings in the exact shapes of record.to_json / to_text (a
sample is checked with parse_line first), because building a LogRecord per line would
make the generation slower than the run being measured.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from harness import cacheproxy_command

from cacheproxy.observe.record import parse_line

MiB = 2**20
START = datetime(2026, 11, 23, 0, 0, tzinfo=UTC).timestamp()
HOSTS = ("www.example.com", "static.example.com", "api.example.com")
AGENTS = ("Mozilla/5.0 (X11; Linux x86_64; rv:132.0) Gecko/20100101 Firefox/132.0",
          "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_6) AppleWebKit/605.1.15 Safari/605.1.15",
          "curl/8.5.0")
MALFORMED = ('{"time":"2026-11-23T00:00:00.000Z","client":"10.1.2.3","meth',
             "\x00\x01\x02\xff\xfe binary \x80\x81", "", "GET / HTTP/1.1 200 - garbage",
             '{"time": 5}', "- - - [not a date] \"GET / HTTP/1.1\" 200 12")


def _status(rank: int, rng: random.Random) -> str:
    """Popular URLs are mostly stored; the tail mostly misses; some traffic bypasses."""
    x = rng.random()
    if x < 0.04:
        return "BYPASS"
    if x < 0.045:
        return rng.choice(("ERROR", "DENIED"))
    p_hit = 0.97 if rank < 1000 else 0.85 if rank < 50_000 else 0.35
    if rng.random() < p_hit:
        return rng.choices(("HIT", "REVALIDATED", "STALE", "UPDATING"), (90, 6, 2, 2))[0]
    return "EXPIRED" if rng.random() < 0.15 else "MISS"


def _record(i: int, urls: int, rng: random.Random) -> dict:
    rank = int(urls ** rng.random())  # P(rank) ~ 1/rank: Zipf with s = 1 over 1..urls
    cache = _status(rank, rng)
    kind = rank % 10
    host = HOSTS[kind % 3]
    path = (f"/img/{rank}.jpg" if kind < 5 else f"/assets/app.{rank}.js" if kind < 8
            else f"/api/items/{rank}?page={rank % 7}")
    size = int(300 * 1.6 ** (rank * 2654435761 % 20 / 2))  # 300 B .. ~30 KiB, by URL
    hit = cache in ("HIT", "STALE", "REVALIDATED", "UPDATING")
    status, total = 200, rng.lognormvariate(math.log(0.6 if hit else 45), 0.6)
    upstream_status, upstream_ms = (None, None) if hit else (200, total * 0.9)
    if cache == "REVALIDATED":
        upstream_status, upstream_ms, total = 304, total * 20, total * 22
    elif cache == "ERROR":
        status, size, upstream_status = rng.choice((502, 504)), 180, None
    elif cache == "DENIED":
        status, size, upstream_status, upstream_ms = 403, 120, None, None
    return {
        "time": START + i * 0.004 + rng.random() * 0.004, "client": f"10.0.{rank % 256}.{i % 250}",
        "method": "POST" if cache == "BYPASS" and kind > 7 else "GET", "host": host,
        "path": path, "status": status, "cache": cache, "bytes": size, "total_ms": total,
        "age": rng.randrange(0, 3600) if hit else None, "ttl": 3600 if cache != "DENIED" else None,
        "upstream_status": upstream_status, "upstream_ms": upstream_ms,
        "referer": f"https://{HOSTS[0]}/", "user_agent": AGENTS[i % 3],
    }


def _iso(t: float) -> str:
    ms = round(t * 1000)
    return datetime.fromtimestamp(ms // 1000, UTC).strftime("%Y-%m-%dT%H:%M:%S") + \
        f".{ms % 1000:03d}Z"


def _opt(value: object, text: bool = False) -> str:
    if value is None:
        return "-" if text else "null"
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def to_json_line(r: dict) -> str:
    return (f'{{"time":"{_iso(r["time"])}","client":"{r["client"]}","method":"{r["method"]}",'
            f'"host":"{r["host"]}","path":"{r["path"]}","status":{r["status"]},'
            f'"cache":"{r["cache"]}","bytes":{r["bytes"]},"total_ms":{r["total_ms"]:.3f},'
            f'"age":{_opt(r["age"])},"ttl":{_opt(r["ttl"])},'
            f'"upstream_status":{_opt(r["upstream_status"])},'
            f'"upstream_ms":{_opt(r["upstream_ms"])},"collapsed":false,"route":"default",'
            f'"policy":null,"protocol":"HTTP/1.1","referer":"{r["referer"]}",'
            f'"user_agent":"{r["user_agent"]}","cache_status":"cacheproxy; '
            f'{"hit" if r["age"] is not None else "fwd=miss"}"}}')


def to_text_line(r: dict) -> str:
    when = datetime.fromtimestamp(r["time"], UTC).strftime("%d/%b/%Y:%H:%M:%S +0000")
    return (f'{r["client"]} - - [{when}] "{r["method"]} {r["path"]} HTTP/1.1" {r["status"]} '
            f'{r["bytes"]} "{r["referer"]}" "{r["user_agent"]}" host={r["host"]} '
            f'cache={r["cache"]} age={_opt(r["age"], True)} ttl={_opt(r["ttl"], True)} '
            f'upstream_status={_opt(r["upstream_status"], True)} '
            f'upstream_ms={_opt(r["upstream_ms"], True)} total_ms={r["total_ms"]:.3f} '
            f'collapsed=0 route=default policy="-" cache_status="cacheproxy; '
            f'{"hit" if r["age"] is not None else "fwd=miss"}"')


def generate(path: Path, size: int, urls: int, seed: int = 1,
             formats: tuple = (to_json_line, to_text_line)) -> int:
    """Writes about `size` bytes of log to path; returns the number of lines."""
    rng = random.Random(seed)
    lines = written = 0
    block = max(1, min(20_000, size // 2000))  # lines per block of one format
    with path.open("w", encoding="utf-8", newline="\n") as f:
        while written < size:
            fmt = formats[(lines // block) % len(formats)]
            batch = []
            for i in range(lines, lines + block):
                if rng.random() < 0.001:
                    batch.append(rng.choice(MALFORMED))
                else:
                    batch.append(fmt(_record(i, urls, rng)))
            data = "\n".join(batch) + "\n"
            f.write(data)
            written += len(data.encode())
            lines += block
    return lines


def check_shapes(urls: int) -> None:
    """The f-string lines must read back as the records they came from."""
    rng = random.Random(7)
    for i in range(2000):
        r = _record(i, urls, rng)
        for line in (to_json_line(r), to_text_line(r)):
            parsed = parse_line(line)
            assert parsed is not None and parsed.cache == r["cache"] and \
                parsed.bytes == r["bytes"] and parsed.path == r["path"], line


def vm_hwm(pid: int) -> int | None:
    """The process's peak resident set so far, in bytes (None once it has gone)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def measure(path: Path) -> dict:
    """Runs `cacheproxy logs PATH --json`, watching its VmHWM."""
    started = time.perf_counter()
    peak = early = 0
    with tempfile.TemporaryFile() as out:
        child = subprocess.Popen([*cacheproxy_command(), "logs", str(path), "--json"],
                                 stdout=out, stderr=subprocess.PIPE)
        while True:
            peak = max(peak, vm_hwm(child.pid) or 0)
            if time.perf_counter() - started < 5:
                early = peak
            pid, status, usage = os.wait4(child.pid, os.WNOHANG)
            if pid:
                break
            time.sleep(0.01)
        elapsed = time.perf_counter() - started
        child.returncode = os.waitstatus_to_exitcode(status)
        cpu = usage.ru_utime + usage.ru_stime  # CPU time, unlike wall time, ignores other load
        out.seek(0)
        output = out.read()
    if child.returncode != 0:
        raise SystemExit(f"cacheproxy logs failed ({child.returncode})")
    report = json.loads(output)
    size = path.stat().st_size
    return {"bytes": size, "seconds": round(elapsed, 2), "cpu_seconds": round(cpu, 2),
            "mb_per_s": round(size / MiB / elapsed, 1),
            "mb_per_cpu_s": round(size / MiB / cpu, 1),
            "lines_per_s": round(report["lines"]["read"] / elapsed),
            "peak_rss_mib": round(peak / MiB, 1), "peak_rss_after_5s_mib": round(early / MiB, 1),
            "report": report}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mb", type=int, default=1024)
    parser.add_argument("--urls", type=int, default=2_000_000)
    parser.add_argument("--per-format-mb", type=int, default=64)
    parser.add_argument("--keep", metavar="DIR", help="write the log here and keep it")
    args = parser.parse_args()
    check_shapes(args.urls)
    workdir = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="logs-bench-",
                                                                       dir="/tmp"))
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        tiny, big = workdir / "tiny.log", workdir / "big.log"
        generate(tiny, 1024, 1000, seed=2)
        per_format = {}
        for name, fmt in (("json", to_json_line), ("text", to_text_line)):
            one = workdir / f"{name}.log"
            generate(one, args.per_format_mb * MiB, args.urls, seed=3, formats=(fmt,))
            per_format[name] = measure(one)
            per_format[name].pop("report")
            one.unlink()
        if not big.exists() or big.stat().st_size < args.size_mb * MiB:
            t = time.perf_counter()
            lines = generate(big, args.size_mb * MiB, args.urls)
            print(f"generated {big.stat().st_size / MiB:.0f} MiB, {lines:,} lines "
                  f"in {time.perf_counter() - t:.0f} s", file=sys.stderr)
        base, run = measure(tiny), measure(big)
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    report = run.pop("report")
    base.pop("report")
    print(json.dumps({"baseline_1KiB": base, "per_format": per_format, "big": run,
                      "distinct_urls_requested_max": args.urls,
                      "requests": report["requests"], "malformed": report["lines"]["malformed"],
                      "max_undercount": report["top"]["max_undercount"]}, indent=2))
    print(f"\nREADME: `cacheproxy logs` read a {run['bytes'] / 2**30:.2f} GiB log "
          f"({report['lines']['read']:,} lines, JSON and text mixed, up to "
          f"{args.urls:,} distinct URLs) in {run['seconds']:.0f} s ({run['mb_per_s']} MiB/s, "
          f"{run['lines_per_s']:,} lines/s; {run['mb_per_cpu_s']} MiB per CPU second) "
          f"with a peak RSS of {run['peak_rss_mib']} MiB "
          f"({base['peak_rss_mib']} MiB on a 1 KiB log); per CPU second, JSON lines alone "
          f"{per_format['json']['mb_per_cpu_s']} MiB, text lines alone "
          f"{per_format['text']['mb_per_cpu_s']} MiB.")


if __name__ == "__main__":
    main()
