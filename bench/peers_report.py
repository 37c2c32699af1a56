"""The report of bench/peers.py: issue 10's table (req/s, p99, CPU per answer), the
ratios its targets name, and what the marks in the table mean."""

from __future__ import annotations

from dataclasses import dataclass

from run import SCENARIOS

# What the origin must see while a target answers a scenario.
HIT, REVAL, PASS, FORWARD, NONE = "hit", "reval", "pass", "forward", "none"
LOAD_BOUND = 0.9  # wrk + origin CPU share on their CPU beyond which they set the pace
QUIET = 0.25  # other processes' CPU (in CPUs) beyond which a round counts as disturbed
ROLE_NOTE = {
    HIT: "a hit: the origin sees no request",
    REVAL: "revalidated: the origin answers 304s and never a 200",
    PASS: "passed through: the origin answers a 200 per request",
    FORWARD: "not revalidated: not stored, forwarded, the origin answers a 200 per request",
    NONE: "answers from memory, no origin",
}


@dataclass(frozen=True)
class Row:
    key: str
    label: str


ROWS = (
    Row("nginx", "nginx proxy_cache"),
    Row("squid", "Squid (accel, cache_mem)"),
    Row("aiohttp", "bare aiohttp + uvloop (ceiling.py)"),
    Row("lean", "lean probe (hit: bytes replay; pass: pooled relay)"),
    Row("cacheproxy", "cacheproxy (default config, JSON log on)"),
    Row("workers2", "cacheproxy --workers 2 (both CPUs, shared with wrk)"),
    Row("nginx2", "nginx, 2 workers (both CPUs, shared with wrk)"),
)


# -- report ----------------------------------------------------------------------------


def cell_text(results: dict, scenario: str, row: str, what: str = "rps") -> str:
    m = results.get(scenario, {}).get(row)
    if m is None:
        return "-"
    if "error" in m:
        return "failed"
    if what == "p99":
        return f"{m['p99_us'] / 1000:.2f}"
    if what == "cpu":
        return f"{m['cpu_us_per_req']:.0f}"
    marks = [mark for mark, on in (("¹", m["role"] == FORWARD), ("²", load_bound(m)),
                                   ("³", disturbed(m))) if on]
    return f"{m['rps']:,.0f}" + (" " + "".join(marks) if marks else "")


def disturbed(m: dict) -> bool:
    """Every round of this cell ran beside busy neighbours."""
    return min(m["others_busy"]) >= QUIET


def load_bound(m: dict) -> bool:
    """wrk and the origin, sharing one CPU, kept it (nearly) busy: the figure is theirs."""
    return m["client_busy"] + m["origin_busy"] >= LOAD_BOUND


def table(results: dict, rows: list[Row]) -> str:
    lines = ["| req/s (best round) | hit 1 KiB | hit 32 KiB | revalidate | pass-through "
             "| p99 ms hit 1 KiB (least) | p99 ms hit 32 KiB (least) |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for row in rows:
        cells = [cell_text(results, s.name, row.key) for s in SCENARIOS]
        p99 = [cell_text(results, s, row.key, "p99") for s in ("hit-1k", "hit-32k")]
        lines.append(f"| {row.label} | " + " | ".join(cells + p99) + " |")
    lines += ["", "| server CPU µs per answer (least of the rounds) | hit 1 KiB | hit 32 KiB "
              "| revalidate | pass-through |", "|---|---:|---:|---:|---:|"]
    for row in rows:
        cpu = [cell_text(results, s.name, row.key, "cpu") for s in SCENARIOS]
        lines.append(f"| {row.label} | " + " | ".join(cpu) + " |")
    measured = [m for by_row in results.values() for m in by_row.values() if "error" not in m]
    if any(m["role"] == FORWARD for m in measured):
        lines.append("\n¹ " + ROLE_NOTE[FORWARD] + " (nginx does not store a `no-cache` "
                     "answer, so it never revalidates one).")
    if any(load_bound(m) for m in measured):
        lines.append(f"\n² wrk and the origin kept their CPU >= {LOAD_BOUND:.0%} busy: a lower "
                     "bound, set by the load side rather than by this server.")
    if any(disturbed(m) for m in measured):
        lines.append(f"\n³ every round of this cell ran beside other processes using >= "
                     f"{QUIET} CPU: likely low.")
    return "\n".join(lines)


@dataclass(frozen=True)
class Ratio:
    label: str
    num: tuple[str, str, str]  # scenario, row, "rps", "p50" or "p99"
    den: tuple[str, str, str]
    target: str  # e.g. ">= 1.0", "" for context only


RATIOS = (
    Ratio("cacheproxy hit 1 KiB / Squid", ("hit-1k", "cacheproxy", "rps"),
          ("hit-1k", "squid", "rps"), ">= 1.0"),
    Ratio("cacheproxy hit 1 KiB / bare aiohttp", ("hit-1k", "cacheproxy", "rps"),
          ("hit-1k", "aiohttp", "rps"), ">= 1.3"),
    Ratio("cacheproxy hit 32 KiB / nginx", ("hit-32k", "cacheproxy", "rps"),
          ("hit-32k", "nginx", "rps"), ">= 0.8"),
    Ratio("cacheproxy pass-through / Squid", ("pass", "cacheproxy", "rps"),
          ("pass", "squid", "rps"), ">= 1.5"),
    Ratio("cacheproxy revalidate / Squid", ("reval", "cacheproxy", "rps"),
          ("reval", "squid", "rps"), ">= 1.5"),
    Ratio("cacheproxy p99 hit 1 KiB / nginx", ("hit-1k", "cacheproxy", "p99"),
          ("hit-1k", "nginx", "p99"), "<= 2.0"),
    Ratio("cacheproxy p99 hit 32 KiB / nginx", ("hit-32k", "cacheproxy", "p99"),
          ("hit-32k", "nginx", "p99"), "<= 2.0"),
    Ratio("cacheproxy --workers 2 / 1 worker, hit 1 KiB", ("hit-1k", "workers2", "rps"),
          ("hit-1k", "cacheproxy", "rps"), ">= 1.8"),
    # What two processes of a peer reach on the same bench: the CPU wrk and the origin
    # take from the pair is the bench's, not the proxy's.
    Ratio("nginx 2 workers / 1 worker, hit 1 KiB", ("hit-1k", "nginx2", "rps"),
          ("hit-1k", "nginx", "rps"), ""),
    # p99 moves most with noise on a shared machine (a few preemptions suffice); the median
    # beside it shows how much of the gap is the proxy's own pace.
    Ratio("cacheproxy p50 hit 1 KiB / nginx", ("hit-1k", "cacheproxy", "p50"),
          ("hit-1k", "nginx", "p50"), ""),
    Ratio("cacheproxy hit 1 KiB / lean probe", ("hit-1k", "cacheproxy", "rps"),
          ("hit-1k", "lean", "rps"), ""),
    Ratio("cacheproxy pass-through / lean probe", ("pass", "cacheproxy", "rps"),
          ("pass", "lean", "rps"), ""),
)


def value(results: dict, ref: tuple[str, str, str]) -> float | None:
    scenario, row, what = ref
    m = results.get(scenario, {}).get(row)
    if m is None or "error" in m:
        return None
    return m[f"{what}_us"] if what in ("p50", "p99") else m["rps"]


def ratios(results: dict, latency: bool = True) -> list[dict]:
    """The RATIOS this run measured; latency=False leaves out p50 and p99 (with
    pipelining, wrk's latencies are those of a batch of requests, not of an answer)."""
    out = []
    for r in RATIOS:
        if not latency and r.num[2] != "rps":
            continue
        num, den = value(results, r.num), value(results, r.den)
        if num is None or not den:
            continue
        x = num / den
        if r.target:
            op, bound = r.target.split()
            reached = x >= float(bound) if op == ">=" else x <= float(bound)
        else:
            reached = None
        out.append({"ratio": r.label, "value": round(x, 3), "target": r.target,
                    "reached": reached, "num": num, "den": den})
    return out


def ratio_table(rs: list[dict]) -> str:
    lines = ["| ratio (this run) | value | issue 10 target | |", "|---|---:|---|---|"]
    for r in rs:
        state = {True: "reached", False: "not reached", None: ""}[r["reached"]]
        lines.append(f"| {r['ratio']} | {r['value']:.2f}x | {r['target'] or '(context)'} "
                     f"| {state} |")
    return "\n".join(lines)


def neighbours(results: dict) -> str:
    """How busy the rest of the machine was while we measured (shared machines)."""
    busy = sorted(x for by_row in results.values() for m in by_row.values()
                  for x in m.get("others_busy", []))
    if not busy:
        return ""
    return (f"Other processes on the machine used {busy[len(busy) // 2]:.2f} CPU (median "
            f"over {len(busy)} measured rounds), {busy[-1]:.2f} at most: rounds taken "
            "beside them are lower, which is why the best round counts.")
